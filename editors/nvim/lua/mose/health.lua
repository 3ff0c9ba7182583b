-- :checkhealth mose
local config = require('mose.config')

local M = {}

local function check_server(opts)
  local exe = vim.fn.exepath(opts.cmd[1])
  if exe == '' then
    vim.health.error(("server executable '%s' not found"):format(opts.cmd[1]), {
      'Install it from a clone of the mose repository: pipx install /path/to/mose (or uv tool install /path/to/mose)',
      'Or point vim.g.mose.cmd at it, e.g. { "/path/to/.venv/bin/mose", "serve" }',
    })
    return false
  end
  local version_cmd = config.version_cmd(opts.cmd)
  local ok, proc = pcall(vim.system, version_cmd, { text = true })
  local result = ok and proc:wait(15000) or nil
  if result == nil or result.code ~= 0 then
    vim.health.error(
      ('`%s` failed: %s'):format(table.concat(version_cmd, ' '), result and vim.trim(result.stderr or '') or tostring(proc)),
      { 'Reinstall the server: pipx install --force /path/to/mose' }
    )
    return false
  end
  vim.health.ok(('server: %s (%s)'):format(vim.trim(result.stdout), exe))
  return true
end

local function check_model(opts)
  local model = opts.settings.model
  if model == nil or model == vim.NIL then
    vim.health.ok('model: the embedded model (the server checks it when a folder opens; see below)')
    return
  end
  local dir = vim.fs.normalize(model)
  local manifest = vim.fs.joinpath(dir, 'manifest.json')
  if vim.fn.isdirectory(dir) ~= 1 then
    vim.health.error(('model directory %s does not exist'):format(dir), { 'Fix vim.g.mose.settings.model' })
    return
  end
  local ok, data = pcall(function()
    return vim.json.decode(table.concat(vim.fn.readfile(manifest), '\n'))
  end)
  if not ok or type(data) ~= 'table' or data.format ~= 'mose-model-dir' or type(data.exits) ~= 'table' then
    vim.health.error(('%s is not a mose model directory (no valid manifest.json)'):format(dir), {
      'Export one with: mose export ...',
    })
    return
  end
  local layers, missing = {}, {}
  for _, e in ipairs(data.exits) do
    layers[#layers + 1] = tostring(e.layer)
    if vim.fn.filereadable(vim.fs.joinpath(dir, e.file)) ~= 1 then
      missing[#missing + 1] = e.file
    end
  end
  if #missing > 0 then
    vim.health.error(('model directory %s lacks %s'):format(dir, table.concat(missing, ', ')))
    return
  end
  vim.health.ok(('model: %s %s, exits %s (%s)'):format(data.name, data.version, table.concat(layers, ', '), dir))
end

local function check_clients()
  local clients = vim.lsp.get_clients({ name = 'mose' })
  if #clients == 0 then
    vim.health.warn('no mose client is running', {
      "Enable the server with vim.lsp.enable('mose') and open a file, or run any :Mose command",
    })
    return
  end
  for _, client in ipairs(clients) do
    local buffers = vim.tbl_keys(client.attached_buffers)
    vim.health.ok(('client %d attached to %d buffer(s), root %s'):format(client.id, #buffers, client.root_dir or '-'))
    local response = client.initialized
        and client:request_sync('workspace/executeCommand', { command = 'mose.status', arguments = {} }, 10000)
      or nil
    if response == nil or response.err then
      vim.health.warn(('mose.status did not answer: %s'):format(response and vim.inspect(response.err) or 'timeout'))
    else
      local status = response.result
      for _, folder in ipairs(status.folders or {}) do
        local line = require('mose').status_lines({ version = status.version, folders = { folder } })[2]
        if folder.state == 'ready' then
          vim.health.ok('folder ' .. line)
        elseif folder.state == 'error' then
          vim.health.error('folder ' .. line)
        else
          vim.health.info('folder ' .. line)
        end
      end
      for _, w in ipairs(status.warnings or {}) do
        vim.health.warn('setting: ' .. w)
      end
    end
  end
end

function M.check()
  vim.health.start('mose')
  if vim.fn.has('nvim-0.11') == 1 then
    vim.health.ok('Neovim ' .. tostring(vim.version()))
  else
    vim.health.error('Neovim 0.11 or newer is needed (vim.lsp.config)')
  end
  local opts, warnings = config.get()
  for _, w in ipairs(warnings) do
    vim.health.warn(w)
  end
  local cmd = (vim.lsp.config.mose or {}).cmd
  if type(cmd) == 'table' then
    opts.cmd = cmd
  end
  check_server(opts)
  check_model(opts)
  check_clients()
  vim.health.info('results go to: ' .. require('mose').picker_name())
end

return M

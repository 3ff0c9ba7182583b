-- The :Mose command: sends the server's commands (docs/protocol.md) and shows the results.
local config = require('mose.config')

local M = {}

local NAME = 'mose'
-- mose is not on the package index: it installs from a clone of its repository.
local INSTALL = 'pipx install /path/to/mose'

local function notify(msg, level)
  vim.notify('mose: ' .. msg, level or vim.log.levels.INFO)
end

--- Whether a buffer holds a file on disk (the server only knows workspace files).
local function is_file_buffer(bufnr)
  return vim.bo[bufnr].buftype == '' and vim.api.nvim_buf_get_name(bufnr) ~= ''
end

--- The mose client for a buffer: one attached to it, one whose root holds it, or a new one.
---@param bufnr integer
---@return vim.lsp.Client?
function M.client(bufnr)
  local attached = vim.lsp.get_clients({ name = NAME, bufnr = bufnr })
  if attached[1] then
    return attached[1]
  end
  local opts, warnings = config.get()
  for _, w in ipairs(warnings) do
    notify(w, vim.log.levels.WARN)
  end
  local root = config.root(bufnr, opts)
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    if client.root_dir == root then
      if is_file_buffer(bufnr) then
        vim.lsp.buf_attach_client(bufnr, client.id)
      end
      return client
    end
  end
  if vim.fn.executable(opts.cmd[1]) ~= 1 then
    notify(
      ("the server command '%s' was not found. Install it from a clone of the mose repository with '%s' (or 'uv tool install /path/to/mose'), or set vim.g.mose.cmd."):format(opts.cmd[1], INSTALL),
      vim.log.levels.ERROR
    )
    return nil
  end
  local base = vim.lsp.config[NAME] or {}
  local cfg = vim.tbl_extend('force', base, { name = NAME, cmd = base.cmd or opts.cmd, root_dir = root })
  cfg.workspace_folders = nil
  local id = vim.lsp.start(cfg, { bufnr = bufnr, attach = is_file_buffer(bufnr) })
  return id and vim.lsp.get_client_by_id(id) or nil
end

--- Run `fn(client)` once the client has been initialised.
local function when_ready(client, fn)
  local waited = 0
  local function poll()
    if client:is_stopped() then
      notify('the server stopped; see :checkhealth mose and :LspLog', vim.log.levels.ERROR)
    elseif client.initialized then
      fn(client)
    elseif waited > 30000 then
      notify('the server did not finish initialising in 30 s', vim.log.levels.ERROR)
    else
      waited = waited + 50
      vim.defer_fn(poll, 50)
    end
  end
  poll()
end

--- workspace/executeCommand with one argument object (or none).
---@param client vim.lsp.Client
---@param command string
---@param arg table?
---@param bufnr integer
---@param on_result fun(result: any)
function M.execute(client, command, arg, bufnr, on_result)
  local params = { command = command, arguments = arg and { arg } or {} }
  client:request('workspace/executeCommand', params, function(err, result)
    if err then
      notify(('%s failed: %s'):format(command, err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    on_result(result)
  end, bufnr)
end

local function first_line(snippet)
  for line in vim.gsplit(snippet or '', '\n', { plain = true }) do
    local text = vim.trim(line)
    if text ~= '' then
      return text
    end
  end
  return ''
end

--- Quickfix items for a search/similar response: symbol (or the first code line) and score.
---@param response { results: table[] }
---@return table[]
function M.to_items(response)
  local items = {}
  for _, r in ipairs(response.results or {}) do
    local label = r.symbol
    if label == nil or label == vim.NIL then
      label = first_line(r.snippet)
    end
    -- `range` is the whole chunk (decorators, docstring); `selectionRange` the symbol's name,
    -- where the cursor should land.
    local first = r.range.start.line + 1
    local last = r.range['end'].character == 0 and r.range['end'].line or r.range['end'].line + 1
    local sel = r.selectionRange
    local lnum, col = first, 0
    if type(sel) == 'table' and sel.start ~= nil then
      lnum, col = sel.start.line + 1, sel.start.character + 1
    end
    items[#items + 1] = {
      filename = vim.uri_to_fname(r.uri),
      lnum = lnum,
      col = col,
      end_lnum = math.max(lnum, last),
      text = ('%s  %.3f'):format(label, r.score),
      user_data = { path = r.path, symbol = r.symbol, kind = r.kind, score = r.score, exit = r.exit },
    }
  end
  return items
end

local function open_picker(picker)
  if picker == 'auto' or picker == 'telescope' then
    local ok, builtin = pcall(require, 'telescope.builtin')
    if ok then
      builtin.quickfix({})
      return 'telescope'
    end
  end
  if picker == 'auto' or picker == 'fzf-lua' then
    local ok, fzf = pcall(require, 'fzf-lua')
    if ok then
      fzf.quickfix()
      return 'fzf-lua'
    end
  end
  vim.cmd('botright copen')
  return 'quickfix'
end

--- Which picker results go to.
function M.picker_name()
  local picker = config.get().picker
  if (picker == 'auto' or picker == 'telescope') and pcall(require, 'telescope') then
    return 'telescope'
  end
  if (picker == 'auto' or picker == 'fzf-lua') and pcall(require, 'fzf-lua') then
    return 'fzf-lua'
  end
  return 'quickfix'
end

local function show(title, command, response)
  local items = M.to_items(response)
  vim.fn.setqflist({}, ' ', { title = title, items = items })
  if #(response.incomplete or {}) > 0 then
    notify('some folders are still being indexed; results may be missing', vim.log.levels.WARN)
  end
  if #items == 0 then
    notify('no results for ' .. title)
  else
    open_picker(config.get().picker)
  end
  vim.api.nvim_exec_autocmds('User', {
    pattern = 'MoseResults',
    modeline = false,
    data = { command = command, title = title, response = response },
  })
end

--- `:Mose search {query}`: natural-language (or code) search of the workspace.
function M.search(query, bufnr)
  query = vim.trim(query or '')
  if query == '' then
    vim.ui.input({ prompt = 'mose search: ' }, function(input)
      if input and vim.trim(input) ~= '' then
        M.search(input, bufnr)
      end
    end)
    return
  end
  local client = M.client(bufnr)
  if not client then
    return
  end
  when_ready(client, function(c)
    M.execute(c, 'mose.search', { query = query }, bufnr, function(result)
      show('mose search: ' .. query, 'search', result)
    end)
  end)
end

--- `:[range]Mose similar`: code like the selected lines, or like the code at the cursor.
---@param bufnr integer
---@param range? { [1]: integer, [2]: integer } 1-based first and last line
function M.similar(bufnr, range)
  if not is_file_buffer(bufnr) then
    notify('open a file of the workspace to find code similar to it', vim.log.levels.WARN)
    return
  end
  local client = M.client(bufnr)
  if not client then
    return
  end
  -- The server reads the buffer (unsaved edits included) of attached documents.
  if not vim.lsp.buf_is_attached(bufnr, client.id) then
    vim.lsp.buf_attach_client(bufnr, client.id)
  end
  local cursor = vim.api.nvim_win_get_cursor(0)
  when_ready(client, function(c)
    local arg = { uri = vim.uri_from_bufnr(bufnr) }
    if range then
      arg.range = { start = { line = range[1] - 1, character = 0 }, ['end'] = { line = range[2], character = 0 } }
    else
      local line = vim.api.nvim_buf_get_lines(bufnr, cursor[1] - 1, cursor[1], false)[1] or ''
      arg.position = { line = cursor[1] - 1, character = vim.str_utfindex(line, c.offset_encoding, cursor[2], false) }
    end
    M.execute(c, 'mose.similar', arg, bufnr, function(result)
      local what = range and ('lines %d-%d'):format(range[1], range[2]) or ('line %d'):format(cursor[1])
      show(('mose similar: %s %s'):format(vim.fn.fnamemodify(vim.api.nvim_buf_get_name(bufnr), ':.'), what), 'similar', result)
    end)
  end)
end

local function pct(x)
  if x == nil or x == vim.NIL then
    return '-'
  end
  return ('%d%%'):format(math.floor(x * 100 + 0.5))
end

local function num(x)
  return (x == nil or x == vim.NIL) and '-' or tostring(x)
end

--- Lines describing a mose.status result.
function M.status_lines(status)
  local lines = { ('mose %s'):format(status.version) }
  for _, f in ipairs(status.folders or {}) do
    local line = ('%s  %s'):format(f.name, f.state)
    if f.state == 'error' then
      line = line .. ': ' .. tostring(f.error)
    else
      line = line
        .. ('  %s/%s files  %s chunks  deep %s'):format(num(f.indexedFiles), num(f.files), num(f.chunks), pct(f.deepCoverage))
    end
    if type(f.model) == 'table' then
      line = line .. ('  model %s %s'):format(f.model.name, f.model.version)
    end
    lines[#lines + 1] = line
  end
  for _, w in ipairs(status.warnings or {}) do
    lines[#lines + 1] = 'warning: ' .. w
  end
  return lines
end

--- `:Mose status`
function M.status(bufnr)
  local client = M.client(bufnr)
  if not client then
    return
  end
  when_ready(client, function(c)
    M.execute(c, 'mose.status', nil, bufnr, function(result)
      local chunks = {}
      for _, line in ipairs(M.status_lines(result)) do
        chunks[#chunks + 1] = { line .. '\n' }
      end
      vim.api.nvim_echo(chunks, true, {})
      vim.api.nvim_exec_autocmds('User', { pattern = 'MoseStatus', modeline = false, data = result })
    end)
  end)
end

--- `:Mose reindex[!]` (with ! the index is rebuilt from nothing).
function M.reindex(bufnr, rebuild)
  local client = M.client(bufnr)
  if not client then
    return
  end
  when_ready(client, function(c)
    notify(rebuild and 'rebuilding the index...' or 'reindexing...')
    M.execute(c, 'mose.reindex', rebuild and { rebuild = true } or nil, bufnr, function(result)
      local indexed = 0
      for _, f in ipairs(result.folders or {}) do
        if type(f.lastScan) == 'table' then
          indexed = indexed + (f.lastScan.filesIndexed or 0)
        end
      end
      notify(('%s: %d files indexed'):format(rebuild and 'rebuilt' or 'reindexed', indexed))
    end)
  end)
end

M.subcommands = { 'search', 'similar', 'status', 'reindex' }

--- Entry point of :Mose.
function M.run(cmd)
  local sub = cmd.fargs[1]
  local rest = table.concat(vim.list_slice(cmd.fargs, 2), ' ')
  local bufnr = vim.api.nvim_get_current_buf()
  if sub == 'search' then
    M.search(rest, bufnr)
  elseif sub == 'similar' then
    M.similar(bufnr, cmd.range > 0 and { cmd.line1, cmd.line2 } or nil)
  elseif sub == 'status' then
    M.status(bufnr)
  elseif sub == 'reindex' then
    M.reindex(bufnr, cmd.bang)
  else
    notify(('unknown subcommand %q (expected %s)'):format(sub, table.concat(M.subcommands, ', ')), vim.log.levels.ERROR)
  end
end

--- Completion of :Mose: the subcommand.
function M.complete(arglead, cmdline)
  local words = vim.split(vim.trim((cmdline:gsub('^%A*', ''))), '%s+')
  if #words > 2 or (#words == 2 and arglead == '') then
    return {}
  end
  return vim.tbl_filter(function(s)
    return vim.startswith(s, arglead)
  end, M.subcommands)
end

return M

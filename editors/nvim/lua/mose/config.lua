-- Options from `vim.g.mose`, with defaults. Read when a server starts or a command runs, so
-- changing `vim.g.mose` takes effect for the next client (`:lsp restart mose` / new session).
local M = {}

---@class mose.Options
---@field cmd string[]              server command (default { "mose", "serve" })
---@field settings table            server settings (docs/protocol.md), e.g. { limit = 20 }
---@field picker string             "auto" | "telescope" | "fzf-lua" | "quickfix"
---@field root_markers string[]     files that mark a workspace root

---@type mose.Options
M.defaults = {
  cmd = { 'mose', 'serve' },
  settings = {},
  picker = 'auto',
  root_markers = { '.git', '.moseignore' },
}

local PICKERS = { auto = true, telescope = true, ['fzf-lua'] = true, quickfix = true }

local function list_of_strings(value)
  if type(value) ~= 'table' or #value == 0 then
    return false
  end
  for _, v in ipairs(value) do
    if type(v) ~= 'string' then
      return false
    end
  end
  return true
end

--- The effective options. A bad value keeps its default and is reported once per call.
---@return mose.Options, string[] warnings
function M.get()
  local user = vim.g.mose
  local opts = vim.deepcopy(M.defaults)
  local warnings = {}
  if user == nil then
    return opts, warnings
  end
  if type(user) ~= 'table' then
    return opts, { 'vim.g.mose must be a table; using the defaults' }
  end
  local checks = {
    cmd = list_of_strings,
    settings = function(v)
      return type(v) == 'table'
    end,
    picker = function(v)
      return PICKERS[v] ~= nil
    end,
    root_markers = list_of_strings,
  }
  for key, value in pairs(user) do
    local check = checks[key]
    if check == nil then
      warnings[#warnings + 1] = ('vim.g.mose.%s is not an option (cmd, settings, picker, root_markers)'):format(key)
    elseif check(value) then
      opts[key] = value
    else
      warnings[#warnings + 1] = ('vim.g.mose.%s = %s is invalid; using the default %s'):format(
        key,
        vim.inspect(value),
        vim.inspect(M.defaults[key])
      )
    end
  end
  return opts, warnings
end

--- The server settings as a JSON object (an empty table would be encoded as a list).
---@param opts mose.Options
function M.server_settings(opts)
  if next(opts.settings) == nil then
    return vim.empty_dict()
  end
  return opts.settings
end

--- The workspace root of a buffer: the nearest folder with a root marker, else the
--- current directory.
---@param bufnr integer
---@param opts? mose.Options
---@return string
function M.root(bufnr, opts)
  opts = opts or M.get()
  local markers = {}
  for _, m in ipairs(opts.root_markers) do
    markers[m] = true
  end
  local name = vim.api.nvim_buf_get_name(bufnr)
  local root = name ~= ''
      and vim.fs.root(bufnr, function(entry)
        return markers[entry] == true
      end)
    or nil
  return root or vim.fn.getcwd()
end

--- The command that prints the server's version: `cmd` up to `serve`, plus `--version`.
---@param cmd string[]
---@return string[]
function M.version_cmd(cmd)
  local out = {}
  for _, word in ipairs(cmd) do
    if word == 'serve' then
      break
    end
    out[#out + 1] = word
  end
  out[#out + 1] = '--version'
  return out
end

return M

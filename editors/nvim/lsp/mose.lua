-- The mose language server for `vim.lsp.enable('mose')` (Neovim 0.11+).
-- Options come from `vim.g.mose` (see `:help mose-configuration`); override any field with
-- `vim.lsp.config('mose', { ... })`.
local config = require('mose.config')
local opts = config.get()

---@type vim.lsp.Config
return {
  cmd = opts.cmd,
  -- Every file type: the server indexes the whole workspace and ignores what it cannot parse.
  root_dir = function(bufnr, on_dir)
    on_dir(config.root(bufnr))
  end,
  init_options = { mose = config.server_settings(opts) },
  settings = { mose = config.server_settings(opts) },
}

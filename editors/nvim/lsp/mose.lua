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
  -- `notifications`: this client handles the server's mose/* notifications (others get none).
  init_options = { mose = vim.tbl_extend('force', config.server_settings(opts), { notifications = true }) },
  settings = { mose = config.server_settings(opts) },
  handlers = {
    -- An edit became searchable: `b:mose_indexed` holds the buffer version and its chunk
    -- count (for a statusline), and `User MoseDocumentIndexed` fires.
    ['mose/documentIndexed'] = function(_, params)
      local bufnr = vim.uri_to_bufnr(params.uri)
      if vim.api.nvim_buf_is_loaded(bufnr) then
        vim.b[bufnr].mose_indexed = { version = params.version, chunks = params.chunks }
      end
      vim.api.nvim_exec_autocmds('User', { pattern = 'MoseDocumentIndexed', data = params })
    end,
  },
}

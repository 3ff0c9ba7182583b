"""`mose export` on the command line: the sub-app joined to the `mose` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mose_lsp.cli as mose_cli
from mose_lsp.model_dir import load_model_dir

mose_cli._add_plugins()
runner = CliRunner()


def _mose(*args: str):
    return runner.invoke(mose_cli.app, list(args))


def test_export_help_needs_no_subcommand():
    result = _mose("export", "--help")
    assert result.exit_code == 0, result.output
    for option in ("SOURCE", "--out", "--exits", "--int8", "--no-int8", "--max-tokens",
                   "--index-exit", "--rerank-exit", "--force"):
        assert option in result.output
    assert "COMMAND" not in result.output


def test_export_end_to_end_refuses_non_empty_out_then_forces(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("keep me", encoding="utf-8")
    args = ["export", "all-minilm-l6-v2", "--out", str(out), "--exits", "2", "--no-int8",
            "--max-tokens", "128"]
    refused = _mose(*args)
    assert refused.exit_code == 1
    assert "not empty" in refused.output and "--force" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]

    done = _mose(*args, "--force")
    assert done.exit_code == 0, done.output
    assert "| 2 | layer2.onnx | none | 384 |" in done.output  # the parity report
    model_dir = load_model_dir(out)
    spec = model_dir.manifest.exit(2)
    assert (spec.quantization, spec.max_tokens, spec.dim) == ("none", 128, 384)
    assert sorted(p.name for p in out.iterdir()) == ["layer2.onnx", "manifest.json",
                                                     "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folders left


@pytest.mark.parametrize("args, message", [
    (["--exits", "2,x"], "comma-separated"),
    (["--exits", "0"], "positive"),
])
def test_bad_exit_lists_are_usage_errors(tmp_path, args, message):
    result = _mose("export", "all-minilm-l6-v2", "--out", str(tmp_path / "m"), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_domain_errors_exit_1_with_a_message(tmp_path):
    result = _mose("export", "all-minilm-l6-v2", "--out", str(tmp_path / "m"), "--exits", "2,6",
                   "--rerank-exit", "4")
    assert result.exit_code == 1
    assert "--rerank-exit 4 is not among the exported exits [2, 6]" in result.output
    assert not (tmp_path / "m").exists()


def test_cli_module_imports_without_torch():
    code = ("import sys, mose_export.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_console_script_runs_the_sub_app():
    script = Path(sys.executable).with_name("mose")
    if not script.exists():
        script = Path(shutil.which("mose") or "mose")
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run([str(script), "export", "--help"], capture_output=True, text=True,
                            check=False,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout and "SOURCE" in result.stdout
    missing = subprocess.run([str(script), "export", "all-minilm-l6-v2"], capture_output=True,
                             check=False,
                             text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "--out" in missing.stderr


def test_missing_torch_names_the_extra_to_install(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from mose_lsp.cli import main; "
            f"main(['export', 'all-minilm-l6-v2', '--out', {str(tmp_path / 'm')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 1
    assert "pip install '.[train]'" in result.stderr and "torch" in result.stderr
    assert not (tmp_path / "m").exists()

"""End to end through the real `mose` command: tiny pretrain -> fine-tune -> export -> index ->
search. Quality is not judged at this size; every stage must run and hand over to the next."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_workspace

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
REPOS = REPO / "tests" / "fixtures" / "repos"
CONFIGS = REPO / "training" / "configs"


def _mose(*args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "mose_lsp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"mose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_tiny_pretrain_finetune_export_index_search(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    _mose("train", "data", "pairs", str(REPOS / "textkit"), str(REPOS / "gostats"), "--out",
          str(pairs), cwd=tmp_path)
    assert sum(1 for _ in pairs.open()) >= 8

    _mose("train", "pretrain", str(CONFIGS / "tiny-pretrain.yaml"),
          "--set", f"output_dir={tmp_path / 'pre'}",
          "--set", f"data.sources=[{REPOS / 'textkit'}, {REPOS / 'gostats'}]",
          "--set", "data.num_samples=256", "--set", "train.max_steps=12",
          "--set", "train.batch_size=8", "--set", "train.save_every=12", cwd=tmp_path)
    _mose("train", "finetune", str(CONFIGS / "tiny-finetune.yaml"),
          "--set", f"output_dir={tmp_path / 'ft'}",
          "--set", f"model.init_from={tmp_path / 'pre' / 'final'}",
          "--set", f"data.train=[{pairs}]", "--set", "train.max_steps=12",
          "--set", "train.batch_size=8", "--set", "train.save_every=12", cwd=tmp_path)
    model = tmp_path / "model"
    _mose("export", str(tmp_path / "ft" / "final"), "--out", str(model), "--exits", "2,4",
          cwd=tmp_path)
    manifest = json.loads((model / "manifest.json").read_text())
    assert [e["layer"] for e in manifest["exits"]] == [2, 4]
    assert manifest["index_exit"] == 2 and manifest["rerank_exit"] == 4

    ws = make_workspace(tmp_path / "ws")
    shutil.copytree(REPOS / "gostats", ws / "gostats")
    common = ["--model", str(model), "--index-dir", str(tmp_path / "idx")]
    report = json.loads(_mose("index", str(ws), *common, "--json", cwd=tmp_path))
    assert report["index"]["chunks"] > 20 and report["run"]["chunks_embedded"] > 20
    hits = json.loads(_mose("search", "edit distance between two strings", "-w", str(ws),
                            *common, "--json", cwd=tmp_path))["hits"]
    assert len(hits) == 10 and all(h["exit"] == 4 for h in hits)
    paths = {s.relative_to(ws).as_posix() for s in ws.rglob("*") if s.is_file()}
    assert all(h["path"] in paths for h in hits)

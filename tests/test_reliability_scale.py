"""Scale and soak (long: behind the `slow` and `soak` markers; `scripts/test` skips `soak`).

Both drive the real `mose serve` through benchmarks/scale_soak.py, which also runs standalone
(`python benchmarks/scale_soak.py scale|soak --minutes N`). Sizes and durations come from the
environment so that a short run is possible:

    MOSE_SCALE_FILES (100000)  MOSE_SCALE_MINUTES (10)  MOSE_SOAK_MINUTES (30)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale_soak

pytestmark = [pytest.mark.slow, pytest.mark.soak,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_first_index_of_a_large_workspace_keeps_answering_with_bounded_memory(
        tmp_path, model_path):
    files = int(os.environ.get("MOSE_SCALE_FILES", "100000"))
    minutes = float(os.environ.get("MOSE_SCALE_MINUTES", "10"))
    result = asyncio.run(scale_soak.run_scale(str(model_path), files, minutes,
                                              workdir=tmp_path))
    print({k: v for k, v in result.items() if k != "rss_samples"})
    assert result["errors"] == []
    assert result["search_during_index"]["n"] > 0
    assert result["chunks"] > 0
    # Bounded: the server holds the model, SQLite's cache and the vector graphs, not the
    # workspace's text: well under 16 KB of resident memory per indexed chunk over the base.
    grown = (result["rss_mb"]["peak"] - result["rss_mb"]["start"]) * 2**20
    assert grown < 16_384 * result["chunks"] + 512 * 2**20, result["rss_mb"]


def test_soak_of_random_edits_and_queries(tmp_path, model_path):
    minutes = float(os.environ.get("MOSE_SOAK_MINUTES", "30"))
    result = asyncio.run(scale_soak.run_soak(str(model_path), minutes, workdir=tmp_path))
    print({k: v for k, v in result.items() if k != "rss_samples"})
    assert scale_soak.soak_failures(result) == []

"""mose.status's index fields never contradict each other."""

from __future__ import annotations

from conftest import make_workspace

from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex
from mose_lsp.lsp.requests import index_status
from mose_lsp.service import Service


def test_no_coverage_is_claimed_before_there_are_chunks(tmp_path, model):
    ws = make_workspace(tmp_path / "ws")
    index = WorkspaceIndex.open(ws, Settings(index_dir=str(tmp_path / "index")), model)
    service = Service()
    folder = service.adopt(index)  # as the language server hands over each folder's index
    try:
        empty = index_status(service, folder)
        assert empty["chunks"] == 0 and empty["deepCoverage"] is None  # not 1.0 of nothing
        assert empty["writer"] is None
        index.scan()
        scanned = index_status(service, folder)
        assert scanned["chunks"] > 0 and 0.0 <= scanned["deepCoverage"] <= 1.0
        assert scanned["indexedFiles"] <= scanned["files"]
        assert sum(scanned["skipped"].values()) == len(scanned["skippedFiles"])
        assert scanned["model"]["name"] and scanned["model"]["path"]
    finally:
        service.release(folder)
        assert index.store.stats().chunks > 0  # released, not closed: the server closes it
        index.close()

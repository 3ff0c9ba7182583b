"""The service layer on a real index: search, similar, status, reindex, freshness, errors."""

from __future__ import annotations

import pytest

from mose_lsp.config import Settings
from mose_lsp.service import Service, ServiceError


@pytest.fixture
def service(tmp_path, workspace, model):
    svc = Service(Settings(index_dir=str(tmp_path / "index")), model=model)
    svc.add_folder(workspace)
    yield svc
    svc.close()


def test_search_is_fresh_and_typed(service, workspace):
    result = service.search("edit distance between two strings", limit=3)
    assert result.hits[0].path == "pkg/strings.py" and result.hits[0].folder == workspace
    assert result.hits[0].start_line == 0 and result.hits[0].symbol == "levenshtein_distance"
    assert result.freshness[0].files_updated > 0 and not result.update_in_progress
    (workspace / "pkg" / "volume.py").write_text(
        "def sphere_volume(radius):\n    return 4 / 3 * 3.14159 * radius ** 3\n")
    result = service.search("volume of a sphere", limit=3)
    assert result.freshness[0].files_updated == 1
    assert result.hits[0].path == "pkg/volume.py"
    again = service.search("volume of a sphere", limit=3)
    assert again.freshness[0].files_updated == 0
    only_js = service.search("wait before calling a function", languages=("javascript",))
    assert {h.language for h in only_js.hits} == {"javascript"}
    globbed = service.search("split a shell command", path_glob="pkg/**")
    assert all(h.path.startswith("pkg/") for h in globbed.hits)


def test_similar_excludes_the_query_code(service, workspace):
    service.reindex()
    by_line = service.similar(path="pkg/strings.py", start_line=2, limit=5)
    assert by_line.hits and all(h.path != "pkg/strings.py" for h in by_line.hits)
    by_range = service.similar(path=str(workspace / "shlex.py"), start_line=0, end_line=40)
    assert all(not (h.path == "shlex.py" and h.start_line <= 40) for h in by_range.hits)
    whole = service.similar(path="web/timing.js")
    assert all(h.path != "web/timing.js" for h in whole.hits)
    snippet = (workspace / "pkg" / "strings.py").read_text()
    pasted = service.similar(text=snippet, language="python", limit=3)
    assert all(" ".join(h.text.split()) != " ".join(snippet.split()) for h in pasted.hits)


def test_bad_requests_say_what_to_send(service):
    with pytest.raises(ServiceError, match="empty"):
        service.search("   ")
    with pytest.raises(ServiceError, match="limit"):
        service.search("x", limit=0)
    with pytest.raises(ServiceError, match="past the end"):
        service.similar(path="pkg/strings.py", start_line=10_000)
    with pytest.raises(ServiceError, match="not inside a workspace"):
        service.similar(path="/no/such/file.py")
    with pytest.raises(ServiceError, match="either a path"):
        service.similar()


def test_status_and_reindex(service, workspace):
    before = service.status()[0]
    assert before.chunks == 0 and before.pending_files > 0 and not before.update_running
    first = service.reindex(deep=True)[0]
    assert first.files_indexed > 0 and first.chunks_embedded > 0 and first.deep_filled > 0
    after = service.status()[0]
    assert after.pending_files == 0 and after.chunks == first.chunks
    assert after.deep_coverage == 1.0
    assert {s.code for s in after.skipped_files} >= {"binary"}
    rebuilt = service.reindex(rebuild=True)[0]
    assert rebuilt.rebuilt and rebuilt.chunks_embedded == first.chunks_embedded
    assert service.reindex()[0].chunks_embedded == 0


def test_a_search_during_this_process_first_index_answers_at_once(service, workspace):
    service.reindex()
    folder = service.folders[0]
    with folder.index._scan_lock:  # as while the server's own first index runs
        assert folder.index.scanning
        result = service.search("edit distance between two strings", limit=3)
    assert result.update_in_progress and "scan" in result.freshness[0].writer
    assert result.hits[0].path == "pkg/strings.py"  # what is indexed so far


def test_an_adopted_index_is_searched_and_left_open(tmp_path, workspace, model):
    """The language server opens its folders' indexes itself and hands them to the service:
    searches go through the service; releasing the folder leaves the index to its owner."""
    import threading

    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.similar import file_query

    index = WorkspaceIndex.open(workspace, Settings(index_dir=str(tmp_path / "own")), model)
    svc = Service()  # no model of its own: the adopted index brings its encoder
    try:
        index.scan()
        folder = svc.adopt(index)
        assert svc.folders == [folder] and folder.adopted and folder.index is index
        found = svc.search("edit distance between two strings", limit=3, fresh=False)
        assert found.hits[0].path == "pkg/strings.py" and found.freshness == ()
        # An editor's unsaved buffer: the query comes from its text (its last line is past
        # the end of the file on disk).
        buffer = (workspace / "pkg" / "strings.py").read_text() + (
            "\n\ndef reverse_words(s):\n    return ' '.join(reversed(s.split()))\n")
        q = file_query("pkg/strings.py", buffer, len(buffer.splitlines()) - 1)
        similar = svc.similar_to(q, folder, limit=4)
        assert similar.hits and all(h.symbol != "reverse_words" for h in similar.hits)
        cancelled = threading.Event()
        cancelled.set()
        assert svc.search("strings", folders=[folder], fresh=False, cancel=cancelled).hits == ()
        svc.release(folder)
        assert svc.folders == [] and index.store.stats().chunks > 0  # still open
        with pytest.raises(ServiceError, match="closed"):
            folder.index  # noqa: B018
    finally:
        svc.close()
        index.close()


def test_status_claims_no_deep_coverage_before_there_are_chunks(tmp_path, model):
    empty = tmp_path / "empty"
    empty.mkdir()
    svc = Service(Settings(index_dir=str(tmp_path / "empty-index")), model=model)
    try:
        svc.add_folder(empty)
        svc.reindex()
        (status,) = svc.status()
        assert status.chunks == 0 and status.deep_coverage is None
        (empty / "a.py").write_text("def area(r):\n    return 3.14159 * r * r\n")
        svc.reindex(deep=True)
        (status,) = svc.status()
        assert status.chunks == 1 and status.deep_coverage == 1.0
    finally:
        svc.close()

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

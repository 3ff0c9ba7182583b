"""Server configuration and request shapes, without LSP or a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mose_lsp.config import Settings
from mose_lsp.protocol import (
    COMMANDS,
    LineRange,
    ParamsError,
    ReindexArgs,
    Result,
    SearchArgs,
    SimilarArgs,
    StatusArgs,
    reopen_needed,
    resolve_config,
    section,
)
from mose_lsp.server import create_server, folder_settings


def test_layers_override_in_order_and_accept_both_spellings():
    cli = Settings(model="/models/cli", threads=2)
    config = resolve_config(cli, {"mose": {"debounceMs": 50, "limit": 7}},
                            {"limit": 3, "rerank_candidates": 50, "watcher": "off"})
    s = config.settings
    assert s.model == "/models/cli" and s.threads == 2  # from the command line
    assert s.debounce_ms == 50  # initializationOptions
    assert s.limit == 3 and s.rerank_candidates == 50  # client settings win
    assert config.options.watcher == "off"
    assert config.warnings == ()
    # No client settings, no init options: the command line alone.
    assert resolve_config(cli).settings == cli


def test_invalid_values_fall_back_and_say_where_they_came_from():
    config = resolve_config(Settings(), {"limit": 0, "useGitignore": "yes", "colour": 1},
                            {"debounceMs": -5, "watcher": "inotify", "exclude": "build"})
    s = config.settings
    assert s.limit == 10 and s.use_gitignore is True and s.debounce_ms == 300
    assert s.exclude == () and config.options.watcher == "auto"
    text = "\n".join(config.warnings)
    for key in ("'limit'", "'useGitignore'", "'colour'", "'debounceMs'", "'watcher'", "'exclude'"):
        assert key in text, key
    assert sum(w.startswith("initializationOptions:") for w in config.warnings) == 3
    assert sum(w.startswith("client settings:") for w in config.warnings) == 3
    # A valid value in a lower layer survives an invalid one above it.
    config = resolve_config(Settings(), {"limit": 5}, {"limit": "many"})
    assert config.settings.limit == 5 and "using the default 5" in config.warnings[0]


def test_settings_that_are_not_an_object():
    config = resolve_config(Settings(), ["model"], None)
    assert config.settings == Settings() and "must be an object" in config.warnings[0]
    assert section({"mose": {"limit": 2}}) == {"limit": 2}
    assert section({"limit": 2}) == {"limit": 2}
    assert section(None) is None


def test_reopen_only_for_index_settings():
    base = Settings()
    assert not reopen_needed(base, Settings(limit=3, debounce_ms=10, rerank=False))
    assert reopen_needed(base, Settings(model="/elsewhere"))
    assert reopen_needed(base, Settings(exclude=("vendor/",)))
    assert reopen_needed(base, Settings(index_dir="/tmp/idx"))


def test_each_folder_gets_its_own_index_dir(tmp_path):
    a, b = tmp_path / "one" / "app", tmp_path / "two" / "app"
    base = Settings(index_dir=str(tmp_path / "indexes"))
    da, db = (Path(folder_settings(base, p).index_dir) for p in (a, b))
    assert da.parent == db.parent == tmp_path / "indexes"
    assert da != db and da.name.startswith("app-")
    assert folder_settings(Settings(), a).index_dir is None  # the per-user cache default


def test_config_lists_effective_settings_in_camel_case():
    data = resolve_config(Settings(), {"limit": 4, "watcher": "client"}).to_json()
    assert data["limit"] == 4 and data["watcher"] == "client"
    assert data["debounceMs"] == 300 and isinstance(data["secretPatterns"], list)


def test_search_args():
    args = SearchArgs.parse([{"query": "parse json", "k": 5, "kind": "code",
                              "languages": ["python"], "pathGlob": "src/**",
                              "folder": "file:///w", "future": True}])
    assert args.query == "parse json" and args.kind == "code"
    assert args.filters.k == 5 and args.filters.languages == ("python",)
    assert args.filters.path_glob == "src/**" and args.filters.folder == "file:///w"
    assert SearchArgs.parse([{"query": "x"}]).filters.k is None


@pytest.mark.parametrize("args, words", [
    (None, "no arguments"),
    ([], "no arguments"),
    (["text"], "got str"),
    ([{"query": "a"}, {"query": "b"}], "2 arguments"),
    ([{"k": 3}], "'query' is required"),
    ([{"query": "  "}], "'query' is required"),
    ([{"query": 3}], "'query' must be a string"),
    ([{"query": "x", "k": 0}], "'k' must be an integer 1..1000"),
    ([{"query": "x", "k": True}], "'k' must be an integer"),
    ([{"query": "x", "kind": "prose"}], "'kind'"),
    ([{"query": "x", "languages": "python"}], "'languages'"),
    ([{"query": "x", "pathGlob": ["a"]}], "'pathGlob'"),
])
def test_search_args_errors_name_the_problem(args, words):
    with pytest.raises(ParamsError) as info:
        SearchArgs.parse(args)
    assert str(info.value).startswith("mose.search: ") and words in str(info.value)


def test_similar_args_and_ranges():
    args = SimilarArgs.parse([{"uri": "file:///w/a.py", "position": {"line": 4, "character": 2}}])
    assert args.position.line == 4 and args.range is None
    args = SimilarArgs.parse([{"uri": "file:///w/a.py", "range": {
        "start": {"line": 2, "character": 0}, "end": {"line": 5, "character": 0}}}])
    assert args.range.lines() == (2, 4)  # the end is exclusive at character 0
    assert LineRange.parse("c", "r", {"start": {"line": 2, "character": 0},
                                      "end": {"line": 5, "character": 3}}).lines() == (2, 5)
    assert LineRange.parse("c", "r", {"start": {"line": 2, "character": 0},
                                      "end": {"line": 2, "character": 0}}).lines() == (2, 2)
    for bad in ({"position": {"line": -1}}, {"position": {"line": "3"}}, {"position": [1, 2]},
                {"range": {"start": {"line": 5}, "end": {"line": 2}}}, {}):
        with pytest.raises(ParamsError):
            SimilarArgs.parse([{"uri": "file:///w/a.py", **bad} if bad else {"position": None}])


def test_status_and_reindex_take_an_optional_object():
    assert StatusArgs.parse([]).folder is None
    assert StatusArgs.parse([{"folder": "file:///w"}]).folder == "file:///w"
    assert ReindexArgs.parse(None) == ReindexArgs()
    assert ReindexArgs.parse([{"rebuild": True}]).rebuild is True
    with pytest.raises(ParamsError):
        ReindexArgs.parse([{"rebuild": "yes"}])
    with pytest.raises(ParamsError):
        StatusArgs.parse(["file:///w"])


def test_result_shape():
    r = Result("file:///w/a.py", "a.py", "file:///w", 3, 7, "f", "function", "python", 0.5,
               6, "def f():")
    data = r.to_json()
    assert data["range"] == {"start": {"line": 3, "character": 0},
                             "end": {"line": 8, "character": 0}}
    assert set(data) == {"uri", "range", "selectionRange", "path", "folder", "symbol", "kind",
                         "language", "score", "exit", "snippet"}


def test_create_server_builds_independent_servers():
    one, two = create_server(Settings(limit=3)), create_server()
    assert one.service is not two.service and one.service.folders is not two.service.folders
    assert one.service.settings.limit == 3 and two.service.settings.limit == 10
    assert set(COMMANDS) <= set(one.protocol.fm.commands)


# -- pieces of the server that need no model: where documents belong, what similar asks for

PY = '''\
import os


def first():
    """One."""
    return 1


def second(x):
    """Two."""
    y = x * 2
    return y
'''


def test_similar_query_is_the_chunk_around_the_position():
    from mose_lsp.server import _query_from_text

    args = SimilarArgs.parse([{"uri": "file:///w/m.py", "position": {"line": 11}}])
    q = _query_from_text("m.py", PY, args, 1_000_000)
    assert q.text.startswith("def second(x):") and q.lines == (8, 11) and q.lang == "python"
    args = SimilarArgs.parse([{"uri": "file:///w/m.py", "range": {
        "start": {"line": 3, "character": 0}, "end": {"line": 6, "character": 0}}}])
    q = _query_from_text("m.py", PY, args, 1_000_000)
    assert q.text == 'def first():\n    """One."""\n    return 1' and q.lines == (3, 5)
    whole = _query_from_text("m.py", PY, SimilarArgs.parse([{"uri": "file:///w/m.py"}]), 10**6)
    assert whole.text == PY and whole.lines is None
    for bad in ({"range": {"start": {"line": 1, "character": 0},
                           "end": {"line": 2, "character": 0}}},  # a blank line
                {"range": {"start": {"line": 99, "character": 0},
                           "end": {"line": 99, "character": 5}}},
                {"position": {"line": 40}}):
        with pytest.raises(ParamsError):
            _query_from_text("m.py", PY, SimilarArgs.parse([{"uri": "file:///w/m.py", **bad}]),
                             1_000_000)


async def test_documents_belong_to_the_innermost_folder_and_outside_ones_are_ignored(tmp_path):
    from pygls.uris import from_fs_path

    outer, inner, other = tmp_path / "outer", tmp_path / "outer" / "libs" / "inner", tmp_path / "x"
    for folder in (inner, other):
        folder.mkdir(parents=True)
    svc = create_server().service
    for folder in (outer, inner):
        assert svc.add_folder(from_fs_path(str(folder)), start=False) is not None
    assert svc.add_folder(from_fs_path(str(outer)), start=False) is None  # already there
    assert svc.add_folder(from_fs_path(str(tmp_path / "missing")), start=False) is None
    found = svc.locate(from_fs_path(str(inner / "pkg" / "a.py")))
    assert found is not None and found[0].root == inner.resolve() and found[1] == "pkg/a.py"
    found = svc.locate(from_fs_path(str(outer / "b.py")))
    assert found is not None and found[0].root == outer.resolve() and found[1] == "b.py"
    assert svc.locate(from_fs_path(str(other / "c.py"))) is None
    assert svc.locate("untitled:Untitled-1") is None
    svc.did_open(from_fs_path(str(other / "c.py")), 1)
    assert svc.docs == {}  # outside every folder: not tracked
    svc.did_open(from_fs_path(str(outer / "b.py")), 1)
    assert next(iter(svc.docs.values())).rel == "b.py"
    assert svc.folder_by_uri(from_fs_path(str(inner))) is not None
    svc.debouncer.close()

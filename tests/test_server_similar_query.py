"""The one "find similar" query (mose_lsp/similar.py): what it is made of, and which hits are
its own code, without an index or a model."""

from __future__ import annotations

import pytest

from mose_lsp.similar import QueryError, file_query, snippet_query

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


def test_the_chunk_around_a_line_and_its_own_code():
    q = file_query("m.py", PY, 10)
    assert q.text.startswith("def second(x):") and q.lines == (8, 11) and q.symbol == "second"
    assert q.content_hash is not None and q.candidates(10) == 18
    assert q.is_own("m.py", 9, 12, "", None)  # overlaps its lines
    assert q.is_own("m.py", 40, 60, "", "second")  # another window of its symbol
    assert not q.is_own("m.py", 3, 5, "", "first")
    assert not q.is_own("other.py", 8, 11, "", "second")


def test_a_range_the_whole_file_and_a_snippet():
    q = file_query("m.py", PY, 3, 5)
    assert q.text == 'def first():\n    """One."""\n    return 1' and q.lines == (3, 5)
    assert file_query("m.py", PY, 3, 999).lines == (3, 11)  # the end is clipped
    whole = file_query("m.py", PY)
    assert whole.lines is None and whole.is_own("m.py", 0, 0, "", None)
    assert whole.candidates(10) == 10 + len(PY.splitlines()) // 5 + 8
    snip = snippet_query("def f():\n    return 1", "python")
    assert snip.is_own("x.py", 0, 1, "def f():  return 1", None)  # the same code, spaced
    assert not snip.is_own("x.py", 0, 1, "def g(): return 2", None)


@pytest.mark.parametrize("args, words", [
    ((1, 2), "blank"), ((99, None), "past the end"), ((40, None), "past the end"),
    ((None, 3), "needs a start"), ((5, 2), "bad line range"),
])
def test_errors_say_what_to_give(args, words):
    with pytest.raises(QueryError) as info:
        file_query("m.py", PY, *args)
    assert words in str(info.value)
    with pytest.raises(QueryError):
        snippet_query("   ")

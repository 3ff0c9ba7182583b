import sqlite3
from collections import Counter

import pytest

from mose_lsp.lexical import (
    SCORED_QUERY_TERMS,
    TERM_DF_TABLE,
    fts_create,
    fts_delete,
    fts_insert,
    fts_query,
    fts_search,
    fts_terms,
    identifier_tokens,
)


def test_stop_words_are_left_out_of_the_match_when_other_words_remain():
    assert fts_terms(None, ["render", "a", "table", "in", "the", "terminal"]) == [
        "render", "table", "terminal"]
    # A query of function words only keeps them (better than matching nothing).
    assert fts_terms(None, ["how", "to", "the"]) == ["how", "to", "the"]
    assert fts_terms(None, []) == []
    assert fts_query(["render", 'say "hi"']) == '"render" OR "say ""hi"""'
    assert fts_query([]) == ""


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:")
    fts_create(c)
    yield c
    c.close()


def term_df(conn) -> dict[str, int]:
    return dict(conn.execute(f"SELECT term, df FROM {TERM_DF_TABLE}").fetchall())


def test_document_frequencies_follow_inserts_and_deletes(conn):
    docs = {1: "def parse_value(value):\n    return value", 2: "def parseTable(rows): pass",
            3: "x = 1"}
    fts_insert(conn, docs.items())
    want = Counter(t for text in docs.values() for t in set(identifier_tokens(text)))
    assert term_df(conn) == want  # a token repeated in a document counts once
    fts_delete(conn, [(2, docs.pop(2))])
    want = Counter(t for text in docs.values() for t in set(identifier_tokens(text)))
    assert term_df(conn) == want
    assert "table" not in term_df(conn)  # no row left for a token no document holds
    fts_delete(conn, list(docs.items()))
    assert term_df(conn) == {}


def test_a_long_query_scores_its_rarest_tokens(conn):
    common = [f"common{chr(97 + i)}" for i in range(SCORED_QUERY_TERMS + 4)]
    docs = [(i, " ".join(common) + f" filler{chr(97 + i % 26)}") for i in range(1, 41)]
    docs.append((99, "zebra " + " ".join(common[:3])))
    fts_insert(conn, docs)
    # The rare token comes last, after more common tokens than are scored.
    query = [*common, "nowhere", "zebra"]
    terms = fts_terms(conn, query)
    assert len(terms) == SCORED_QUERY_TERMS
    assert terms[0] == "zebra"  # df 1 first; a token no document holds is dropped
    assert "nowhere" not in terms
    # Then df 40 (the first three common tokens are in 41 documents); equal df: query order.
    assert terms[1:] == common[3:SCORED_QUERY_TERMS + 2]
    ids, _ = fts_search(conn, query, 1)
    assert ids.tolist() == [99]
    # Without the frequencies (the first tokens) the rare one would not be scored at all.
    assert "zebra" not in fts_terms(None, query)


def test_a_short_query_keeps_every_token_without_a_lookup():
    class NoQueries:
        def execute(self, *args):
            raise AssertionError("a short query needs no document frequencies")

    tokens = [f"t{i}" for i in range(SCORED_QUERY_TERMS)]
    assert fts_terms(NoQueries(), tokens) == tokens

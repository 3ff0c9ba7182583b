"""The lexical signal: identifier-split tokens and BM25 over SQLite FTS5.

The workspace store keeps a full-text index (FTS5, contentless) of every chunk's tokens; the
searcher fuses its BM25 with the deep cosine, and ``mose eval --bm25`` ranks with the same
functions, so the baseline is what ships.

Tokens: runs of letters and digits, split at snake_case underscores, camelCase humps
(``parseHTTPResponse2`` -> ``parse http response 2``) and letter/digit boundaries, lowercased.

Scoring is FTS5's ``bm25()`` (see :data:`FTS_SCHEMA`). A query is its distinct tokens, so a
token repeated in the query counts once: code used as a query repeats ``i``, ``n`` and
``return`` many times, and letting repeats multiply their weight lowers cross-language code
search.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np

# Runs of letters/digits (underscores and everything else separate identifiers).
_WORD = re.compile(r"[^\W_]+")
# Inside an ASCII run: an acronym before a capitalised word, a (capitalised) word, an acronym, digits.
_ASCII_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _split_unicode(word: str) -> list[str]:
    """camelCase split by character class for words with non-ASCII letters."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(word)):
        prev, cur = word[i - 1], word[i]
        nxt = word[i + 1] if i + 1 < len(word) else ""
        if (
            (prev.isdigit() != cur.isdigit())
            or (prev.islower() and cur.isupper())
            or (prev.isupper() and cur.isupper() and nxt.islower())
        ):
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return parts


def identifier_tokens(text: str) -> list[str]:
    """Split ``text`` into lowercase identifier parts (camelCase, snake_case, digits)."""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        if word.isascii():
            parts = _ASCII_PART.findall(word)
        else:
            parts = _split_unicode(word)
        tokens.extend(p.lower() for p in parts)
    return tokens


TOKENS_VERSION = "1"
"""Changes whenever :func:`identifier_tokens` splits text differently: a store records it and
rebuilds its full-text index when it differs (the index's deletes re-tokenise the stored text,
so they must see the tokens the insert saw)."""

MAX_QUERY_TERMS = 64
"""Distinct tokens a lexical query reads (the first ones, in query order): bounds the work of
a long code query, in the store's full-text search and in ``mose eval`` alike."""

SCORED_QUERY_TERMS = 16
"""Of a query's tokens, the full-text search scores at most this many: the rarest ones (by
document frequency, from :data:`TERM_DF_TABLE`). FTS5's ``bm25()`` costs about a microsecond
per chunk that holds any query token, so a whole function used as a query (30-60 tokens, most
of them common: ``return``, ``self``, ``value``) made it score most of the store. Its 16
rarest tokens carry almost all of the BM25 weight: ``benchmarks/workspace_bench.py``'s code
queries at 100k chunks went from p50/p95 103/161 ms to 46/74 ms, and ``mose eval``'s fused MRR
on the code -> code suites did not move (8 tokens cost 0.5 on one). Text queries rarely have
more than 16 tokens and keep them all."""

#: English function words left out of FTS5 queries (not of the index) when a query has other
#: words: they match most chunks, so FTS5 scores nearly every row for almost no BM25 weight
#: (measured on 100k chunks: "render a table in the terminal" 92 ms -> 12 ms).
QUERY_STOP_WORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "by", "for", "from", "with",
     "into", "is", "are", "be", "was", "were", "as", "it", "its", "this", "that", "these",
     "those", "how", "what", "which", "do", "does"])


def query_terms(query: str | Iterable[str], limit: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct tokens of ``query`` (text, or tokens already split), in order, at most
    ``limit``; empty strings are dropped."""
    tokens = identifier_tokens(query) if isinstance(query, str) else query
    out: dict[str, None] = {}
    for token in tokens:
        if isinstance(token, str) and token and token not in out:
            out[token] = None
            if len(out) >= limit:
                break
    return list(out)


# -- SQLite FTS5 (the workspace store's lexical index; ``mose eval`` scores with the same code) --

FTS_TABLE = "chunks_fts"
FTS_SCHEMA = (f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(tokens, content = '', "
              "tokenize = 'unicode61 remove_diacritics 0')")
"""Contentless FTS5 over :func:`identifier_tokens` joined by spaces, rowid = document id.
Its score is FTS5's ``bm25()`` (k1 = 1.2, b = 0.75, idf = ln((N - df + 0.5) / (df + 0.5))
floored at 1e-6, so a token in more than half the documents adds almost nothing, and a
repeated query token counts once since queries are made of distinct tokens)."""

TERM_DF_TABLE = "term_df"
TERM_DF_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TERM_DF_TABLE} (term TEXT PRIMARY KEY, "
                  "df INTEGER NOT NULL) WITHOUT ROWID")
"""Document frequency of every token in :data:`FTS_TABLE`, kept by :func:`fts_insert` and
:func:`fts_delete` in the same transaction: a query picks its rarest tokens with one indexed
lookup (FTS5's own ``fts5vocab`` counts a token's documents by reading its whole postings
list: 11 ms for a 64-token query at 100k chunks)."""


def fts_create(conn: sqlite3.Connection) -> None:
    """Create the full-text index and its document frequencies (empty)."""
    conn.execute(FTS_SCHEMA)
    conn.execute(TERM_DF_SCHEMA)


def fts_text(text: str) -> str:
    """What the full-text index stores for a document: its tokens joined by spaces."""
    return " ".join(identifier_tokens(text))


def fts_insert(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Index documents ``(id, text)`` (in the caller's transaction)."""
    docs = [(int(i), fts_text(text)) for i, text in rows]
    conn.executemany(f"INSERT INTO {FTS_TABLE} (rowid, tokens) VALUES (?, ?)", docs)
    _count_terms(conn, docs, +1)


def fts_delete(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Remove documents ``(id, text)``: the text must be the one they were indexed with (a
    contentless table can only subtract the tokens it is given)."""
    docs = [(int(i), fts_text(text)) for i, text in rows]
    conn.executemany(
        f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rowid, tokens) VALUES ('delete', ?, ?)", docs)
    _count_terms(conn, docs, -1)


def _count_terms(conn: sqlite3.Connection, docs: Sequence[tuple[int, str]], sign: int) -> None:
    """Add ``sign`` to the document frequency of each distinct token of each document."""
    counts: Counter[str] = Counter()
    for _, tokens in docs:
        counts.update(set(tokens.split()))
    if not counts:
        return
    conn.executemany(
        f"INSERT INTO {TERM_DF_TABLE} (term, df) VALUES (?, ?) "
        "ON CONFLICT (term) DO UPDATE SET df = df + excluded.df",
        ((term, sign * n) for term, n in counts.items()))
    if sign < 0:
        conn.executemany(f"DELETE FROM {TERM_DF_TABLE} WHERE term = ? AND df <= 0",
                         ((term,) for term in counts))


def fts_terms(conn: sqlite3.Connection | None, query_tokens: Iterable[str]) -> list[str]:
    """The tokens a full-text search scores: the distinct tokens (the first
    :data:`MAX_QUERY_TERMS`), without NUL or lone surrogates, without English function words
    when other tokens remain, and, when more than :data:`SCORED_QUERY_TERMS` remain, the rarest
    of those found in ``conn``'s index (ties in query order; tokens no document holds would
    match nothing and are dropped). ``conn`` None keeps the first ones."""
    terms = query_terms(clean for t in query_tokens if isinstance(t, str)
                        if (clean := _fts_clean(t)).strip())
    content = [t for t in terms if t.lower() not in QUERY_STOP_WORDS]
    terms = content or terms
    if len(terms) <= SCORED_QUERY_TERMS:
        return terms
    if conn is None:
        return terms[:SCORED_QUERY_TERMS]
    keys = [t.lower() for t in terms]  # the index holds lowercase tokens
    wanted = list(dict.fromkeys(keys))
    df = dict(conn.execute(f"SELECT term, df FROM {TERM_DF_TABLE} WHERE term IN "
                           f"({', '.join(['?'] * len(wanted))})", wanted).fetchall())
    held = [i for i, key in enumerate(keys) if df.get(key, 0) > 0]
    held.sort(key=lambda i: df[keys[i]])  # stable: ties stay in query order
    return [terms[i] for i in held[:SCORED_QUERY_TERMS]]


def fts_query(terms: Iterable[str]) -> str:
    """An FTS5 MATCH expression: each of ``terms`` (as :func:`fts_terms` picks them) as a
    quoted string (inner quotes doubled), OR-ed; '' when there is none. Quoting makes FTS5
    operators (AND, OR, NOT, NEAR, ``*``, ``^``, ``:``, parentheses) plain text."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _fts_clean(token: str) -> str:
    """Without what SQLite cannot take in a MATCH string: NUL (it ends the string early) and
    lone surrogates (not UTF-8)."""
    if token.isascii() and "\x00" not in token:
        return token
    return token.replace("\x00", "").encode("utf-8", "ignore").decode("utf-8")


def fts_search(
    conn: sqlite3.Connection, query_tokens: Iterable[str], k: int,
    keep: Collection[int] | Callable[[int], bool] | None = None,
    rowids: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` documents by BM25 (positive, best first; ties: lower id first) as ``(ids
    int64, scores float64)``, restricted to the ids ``keep`` holds or accepts and to the
    inclusive id range ``rowids``. A range changes no score (BM25's statistics are the whole
    table's), so the best of several ranges' lists are the best of the table."""
    match = fts_query(fts_terms(conn, query_tokens))
    ids: list[int] = []
    scores: list[float] = []
    if match and k >= 1:
        accept = keep
        if accept is not None and not callable(accept):
            accept = {int(i) for i in accept}.__contains__
        where, args = "", [match]
        if rowids is not None:
            where, args = " AND rowid BETWEEN ? AND ?", [match, int(rowids[0]), int(rowids[1])]
        sql = (f"SELECT rowid, -bm25({FTS_TABLE}) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?"
               f"{where} ORDER BY rank, rowid")
        cursor = conn.execute(sql, args) if accept is not None else conn.execute(
            sql + " LIMIT ?", (*args, int(k)))
        try:
            while len(ids) < k and (rows := cursor.fetchmany(256)):
                for i, score in rows:
                    if accept is None or accept(i):
                        ids.append(int(i))
                        scores.append(float(score))
                        if len(ids) >= k:
                            break
        finally:
            cursor.close()
    return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def lexical_signal(
    ids: Sequence[int], scores: Sequence[float], n_candidates: int,
    keep: Callable[[int], bool] | None = None,
) -> tuple[dict[int, float], list[int]]:
    """The lexical part of a fused search, from one BM25 ranking over the whole corpus (best
    first, as :func:`fts_search` gives it, cut at some depth): every ranked id's BM25 divided
    by the best (so in (0, 1]; ids below the depth count 0), and the first ``n_candidates``
    ids that ``keep`` accepts (the BM25 candidates added to the dense ones)."""
    if not len(scores) or float(scores[0]) <= 0:
        return {}, []
    best = float(scores[0])
    signal = {int(i): float(v) / best for i, v in zip(ids, scores)}
    accepted = (int(i) for i in ids if keep is None or keep(int(i)))
    top = list(itertools.islice(accepted, max(0, n_candidates)))
    return signal, top

"""Evaluation suites (shared/eval/README.md): a folder with ``corpus.jsonl`` and
``queries.jsonl``, and the small encoder interface evaluation needs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import MoseError

KINDS = ("text", "code")
CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"


class SuiteError(MoseError):
    """An evaluation suite is missing or malformed."""


@runtime_checkable
class Encoder(Protocol):
    """What evaluation needs from a multi-exit encoder (ONNX or torch)."""

    @property
    def name(self) -> str: ...

    @property
    def exits(self) -> tuple[int, ...]:
        """Available exit layers, shallow to deep."""
        ...

    def encode(self, texts: Sequence[str], kind: str, exit: int,
               langs: Sequence[str] | None = None) -> np.ndarray:
        """(N, D) float32 embeddings; dot product is the similarity (normalised vectors)."""
        ...


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    lang: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    kind: str  # "text" (natural language) | "code"
    lang: str
    relevant: tuple[str, ...]  # corpus ids


@dataclass(frozen=True)
class Suite:
    name: str
    documents: tuple[Document, ...]
    queries: tuple[Query, ...]
    path: Path | None = None

    def limit(self, n_queries: int | None) -> Suite:
        """The first ``n_queries`` queries against the whole corpus."""
        if n_queries is None or n_queries >= len(self.queries):
            return self
        return replace(self, queries=self.queries[:max(0, n_queries)])

    def relevant_indices(self) -> list[np.ndarray]:
        """Per query, the corpus positions of its relevant documents."""
        position = {d.id: i for i, d in enumerate(self.documents)}
        return [np.array([position[r] for r in q.relevant], dtype=np.int64)
                for q in self.queries]


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{path} does not exist: a suite folder holds {CORPUS_FILE} and "
                         f"{QUERIES_FILE} (see shared/eval/README.md)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"cannot read {path}: {err}") from err
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise SuiteError(f"{path}, line {lineno}: expected a JSON object")
        yield lineno, record


def _field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise SuiteError(f"{where}: field {key!r} is {what}")
    return value


def load_suite(path: str | Path, name: str | None = None) -> Suite:
    """Read one suite folder (``corpus.jsonl`` + ``queries.jsonl``)."""
    root = Path(path)
    if not (root / CORPUS_FILE).is_file() and root.is_dir() and any(root.rglob(CORPUS_FILE)):
        raise SuiteError(f"{root} holds several suites in subfolders; use load_suites")
    documents: list[Document] = []
    seen: set[str] = set()
    corpus = root / CORPUS_FILE
    for lineno, rec in _read_jsonl(corpus):
        where = f"{corpus}, line {lineno}"
        doc = Document(_field(rec, "id", where), _field(rec, "text", where),
                       _field(rec, "lang", where))
        if doc.id in seen:
            raise SuiteError(f"{where}: document id {doc.id!r} appears twice")
        seen.add(doc.id)
        documents.append(doc)
    if not documents:
        raise SuiteError(f"{corpus} holds no documents")
    queries: list[Query] = []
    query_file = root / QUERIES_FILE
    query_ids: set[str] = set()
    for lineno, rec in _read_jsonl(query_file):
        where = f"{query_file}, line {lineno}"
        kind = _field(rec, "kind", where)
        if kind not in KINDS:
            raise SuiteError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        relevant = rec.get("relevant")
        if (not isinstance(relevant, list) or not relevant
                or not all(isinstance(r, str) for r in relevant)):
            raise SuiteError(f"{where}: 'relevant' must be a non-empty list of corpus ids")
        unknown = [r for r in relevant if r not in seen]
        if unknown:
            raise SuiteError(f"{where}: relevant id(s) {unknown} are not in {corpus.name}")
        query = Query(_field(rec, "id", where), _field(rec, "text", where), kind,
                      _field(rec, "lang", where), tuple(dict.fromkeys(relevant)))
        if query.id in query_ids:
            raise SuiteError(f"{where}: query id {query.id!r} appears twice")
        query_ids.add(query.id)
        queries.append(query)
    if not queries:
        raise SuiteError(f"{query_file} holds no queries")
    return Suite(name or root.name, tuple(documents), tuple(queries), root)


def load_suites(path: str | Path) -> list[Suite]:
    """A suite folder, or a folder of suite folders at any depth (named by relative path,
    e.g. ``transcoder-dev/python-java``), sorted by name."""
    root = Path(path)
    if (root / CORPUS_FILE).is_file():
        return [load_suite(root)]
    if not root.is_dir():
        raise SuiteError(f"suite folder {root} does not exist")
    found = sorted(p.parent for p in root.rglob(CORPUS_FILE))
    if not found:
        raise SuiteError(f"{root} holds no suite (no {CORPUS_FILE} in it or its subfolders)")
    return [load_suite(p, name=(Path(root.name) / p.relative_to(root)).as_posix())
            for p in found]

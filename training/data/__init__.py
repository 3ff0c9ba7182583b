"""Data builders for MoSE training: corpora, ICC samples, mined pairs, translations, dedup.

Modules (import the one you need; nothing here imports torch):

- ``corpus``: repository corpora (folders, git, The Stack-shaped JSONL/parquet), filters,
  tokenisation and packing into fixed-length sequences.
- ``icc``: in-context classification samples ("same repository?") for pretraining.
- ``pairs``: docstring -> function pairs mined with tree-sitter, CodeSearchNet style, and the
  cross-language code -> code pair format.
- ``translate``: SynthCoNL-style translation of mined functions with a local or remote LLM.
- ``dedup``: MinHash-LSH near-deduplication and decontamination against evaluation suites.
- ``cli``: the ``mose train data ...`` commands (``register(app)``).
"""

from __future__ import annotations

from mose_lsp.errors import MoseError


class DataError(MoseError):
    """A data source or data file cannot be used; the message says what to do."""

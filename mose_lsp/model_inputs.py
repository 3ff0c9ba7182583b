"""What a model is fed: render the input template, tokenise, truncate, pad. The one implementation.

The ONNX encoder (``encoder.ModelEncoder``), the torch encoder of training
(``training/evaluation.py``), the exporter's parity inputs (``export/inputs.py``) and the
recipes all tokenise through :class:`InputTokenizer`, so a model is trained, exported, checked
and served on the same ids and masks: a mismatch there would be the costliest bug of all, and
silent.

Truncation keeps the template: the input is ``prefix + content + suffix`` (plus the tokenizer's
own special tokens when the format asks for them) and only the content is cut, from its end,
until the whole fits ``max_tokens``. The suffix is never cut because the pooled token (``<cls>``)
may be its last token. A token that straddles the end of the content and the start of the
suffix is kept with the suffix.

Padding is on the right with the model's ``pad_id``; the attention mask is 1 on real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelDirError
from .model_dir import InputFormat, ModelDir

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

KINDS = ("text", "code")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizers`` tokenizer from ``tokenizer.json``, with its own truncation and padding
    off (ours keep the template's suffix)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    # tokenizers raises a bare Exception for a malformed file.
    except Exception as err:
        raise ModelDirError(f"cannot read the tokenizer {path}: {err}. Re-export the model "
                            f"with 'mose export'.") from err
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class InputTokenizer:
    """Template rendering, tokenisation, content-only truncation and padding."""

    def __init__(self, tokenizer: Tokenizer, text_format: InputFormat, code_format: InputFormat,
                 pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.formats = {"text": text_format, "code": code_format}
        self.pad_id = int(pad_id)

    @classmethod
    def from_file(cls, tokenizer_file: str | Path, text_format: InputFormat,
                  code_format: InputFormat, pad_id: int) -> InputTokenizer:
        return cls(load_tokenizer(tokenizer_file), text_format, code_format, pad_id)

    @classmethod
    def for_model_dir(cls, model_dir: ModelDir) -> InputTokenizer:
        """The inputs a model directory's manifest describes."""
        manifest = model_dir.manifest
        return cls.from_file(model_dir.tokenizer_path, manifest.text_format,
                             manifest.code_format, manifest.pad_id)

    def format(self, kind: str) -> InputFormat:
        try:
            return self.formats[kind]
        except KeyError:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}") from None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each raw text, without template or special tokens (for sizing chunks)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def encode(self, texts: Sequence[str], kind: str | Sequence[str], max_tokens: int,
               langs: Sequence[str | None] | None = None) -> list[list[int]]:
        """Token ids of each input as the model receives them (template, specials,
        truncation to ``max_tokens``); ``kind`` is one kind for all inputs, or one per input."""
        kinds = [kind] * len(texts) if isinstance(kind, str) else list(kind)
        names = [""] * len(texts) if langs is None else [lang or "" for lang in langs]
        if not len(kinds) == len(names) == len(texts):
            raise ValueError(f"got {len(texts)} texts, {len(kinds)} kinds and {len(names)} "
                             "languages; give one of each per text")
        out: list[list[int]] = [[] for _ in texts]
        for k in dict.fromkeys(kinds):
            fmt = self.format(k)
            rows = [i for i, ki in enumerate(kinds) if ki == k]
            rendered: list[str] = []
            spans: list[tuple[int, int]] = []  # content [start, end) in the rendered string
            for i in rows:
                prefix, suffix = fmt.render(texts[i], names[i])
                rendered.append(prefix + texts[i] + suffix)
                spans.append((len(prefix), len(prefix) + len(texts[i])))
            encodings = self.tokenizer.encode_batch(rendered,
                                                    add_special_tokens=fmt.add_special_tokens)
            for i, enc, (start, end) in zip(rows, encodings, spans):
                ids = enc.ids
                if len(ids) > max_tokens:
                    ids = truncate_content(enc, start, end, max_tokens, k)
                out[i] = list(ids)
        return out

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad token rows -> ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T)
        int64 (1 on real tokens); T is the longest row (at least 1)."""
        width = max(1, max((len(r) for r in rows), default=0))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


def truncate_content(enc: Encoding, start: int, end: int, max_tokens: int,
                     kind: str) -> list[int]:
    """Drop content tokens from the end until the encoding fits ``max_tokens``.

    Tokens are classified by their character offsets in the rendered string: added special
    tokens (no sequence id) and tokens ending at or before ``start`` belong to the prefix or the
    tokenizer's specials, tokens reaching past ``end`` to the suffix; the rest is content.
    """
    ids, offsets, seq = enc.ids, enc.offsets, enc.sequence_ids
    is_content = [s is not None and start < o[1] <= end for s, o in zip(seq, offsets)]
    n_content = sum(is_content)
    keep = max_tokens - (len(ids) - n_content)
    if keep < 0:
        raise ModelDirError(
            f"the {kind} input template and special tokens alone take {len(ids) - n_content} "
            f"tokens, more than max_tokens ({max_tokens}); raise the exit's max_tokens or "
            "shorten the templates in the model's manifest.")
    out: list[int] = []
    for token, content in zip(ids, is_content):
        if content:
            if keep == 0:
                continue
            keep -= 1
        out.append(token)
    return out

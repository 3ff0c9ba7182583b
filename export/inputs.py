"""Real inputs for parity checks and benchmarks, tokenised as the model directory says.

No torch here: numpy and tokenizers only, so the benchmark's ONNX side and the checks of an
existing model directory need nothing heavy.

Tokenisation is the runtime's (``mose_lsp.model_inputs``): render the template, tokenise, cut
only the content so that the template's suffix (the pooled ``<cls>`` of a MoSE exit) survives,
pad on the right with ``pad_id``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mose_lsp.errors import ModelDirError
from mose_lsp.model_dir import InputFormat
from mose_lsp.model_inputs import InputTokenizer

from .errors import ExportError

# Natural-language queries of varying length (written for mose).
TEXT_SAMPLES: tuple[str, ...] = (
    "x",
    "sort a list",
    "read a JSON file and return its contents as a dictionary",
    "compute the sha256 checksum of a large file without loading it all into memory",
    ("retry an HTTP request with exponential backoff when the server answers 503, and give up "
    "after five attempts, logging every failure with its status code and the time waited"),
)


@dataclass(frozen=True)
class Sample:
    kind: str  # "text" | "code"
    content: str
    lang: str = ""


def code_samples(limit: int = 4) -> list[str]:
    """Source of real functions of varying length (mose's own, then a few standard-library ones).

    Read at run time with ``inspect``; some are longer than any ``max_tokens``, so truncation
    is exercised too.
    """
    import json
    import shutil
    import textwrap

    from mose_lsp import model_dir

    functions = [model_dir.sha256_file, model_dir.load_model_dir, textwrap.dedent,
                 model_dir.write_manifest, json.dumps, shutil.copyfile, shutil.rmtree]
    found: list[str] = []
    for fn in functions:
        try:
            found.append(inspect.getsource(fn))
        except (OSError, TypeError):  # a frozen or source-less standard library
            continue
    return found[:limit]


def parity_samples() -> list[Sample]:
    """Code and text of varying lengths: the inputs every exported exit is checked on."""
    samples = [Sample("code", src, "python") for src in code_samples()]
    samples += [Sample("text", text) for text in TEXT_SAMPLES]
    return samples


class InputEncoder:
    """Tokenise samples into (ids, mask) int64 arrays of shape (B, T), right padded.

    The ids come from the runtime's own ``mose_lsp.model_inputs.InputTokenizer`` (template,
    special tokens, template-preserving truncation, padding): what is checked here is exactly
    what the runtime will feed the exported files.
    """

    def __init__(self, tokenizer_path: str | Path, text_format: InputFormat,
                 code_format: InputFormat, max_tokens: int, pad_id: int):
        try:
            self._inputs = InputTokenizer.from_file(tokenizer_path, text_format, code_format,
                                                    pad_id)
        except ModelDirError as err:
            raise ExportError(f"cannot use the tokenizer {tokenizer_path}: {err}") from err
        self.max_tokens = max_tokens
        self.pad_id = pad_id

    def ids(self, samples: list[Sample]) -> list[list[int]]:
        try:
            return self._inputs.encode([s.content for s in samples], [s.kind for s in samples],
                                       self.max_tokens, [s.lang for s in samples])
        except ModelDirError as err:
            raise ExportError(f"cannot tokenise the parity inputs: {err}") from err

    def batch(self, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        return self._inputs.pad(self.ids(samples))

"""A torch-backed encoder with the runtime's small encoder interface.

``TorchEncoder.encode(texts, kind, exit, langs) -> (N, D) float32`` does what the runtime's
``mose_lsp.encoder.ModelEncoder`` does over ONNX files, on a live ``MultiExitEncoder``: render the
model's input template (``ExportInfo.text_template`` / ``code_template``), tokenise, cut only the
content when too long (the runtime's own truncation function), pad, run the exit. So the
evaluation code in ``mose_lsp`` scores a training checkpoint and an exported model directory the
same way, and the fine-tuning recipe tokenises its pairs exactly as the product will.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mose_lsp.encoder import _truncate_content  # the runtime's rule: keep prefix and suffix
from mose_lsp.model_dir import InputFormat

KINDS = ("text", "code")


class InputTokenizer:
    """Template rendering + tokenisation + content-only truncation, as the runtime does it."""

    def __init__(self, tokenizer_file: str | Path, text_template: str, code_template: str,
                 add_special_tokens: bool, pad_id: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.formats = {"text": InputFormat(text_template, add_special_tokens),
                        "code": InputFormat(code_template, add_special_tokens)}
        self.pad_id = int(pad_id)

    @classmethod
    def for_model(cls, model, tokenizer_file: str | Path) -> InputTokenizer:
        info = model.export_info()
        return cls(tokenizer_file, info.text_template, info.code_template,
                   info.add_special_tokens, info.pad_id)

    def encode(self, texts: Sequence[str], kind: str | Sequence[str], max_tokens: int,
               langs: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids per input; ``kind`` is one kind for all, or one per input."""
        kinds = [kind] * len(texts) if isinstance(kind, str) else list(kind)
        langs = [""] * len(texts) if langs is None else [lang or "" for lang in langs]
        if not len(kinds) == len(langs) == len(texts):
            raise ValueError(f"{len(texts)} texts, {len(kinds)} kinds, {len(langs)} languages")
        out: list[list[int] | None] = [None] * len(texts)
        for k in set(kinds):
            if k not in KINDS:
                raise ValueError(f"kind must be one of {KINDS}, got {k!r}")
            fmt = self.formats[k]
            rows = [i for i, ki in enumerate(kinds) if ki == k]
            rendered, spans = [], []
            for i in rows:
                prefix, suffix = fmt.render(texts[i], langs[i])
                rendered.append(prefix + texts[i] + suffix)
                spans.append((len(prefix), len(prefix) + len(texts[i])))
            encodings = self.tokenizer.encode_batch(rendered,
                                                    add_special_tokens=fmt.add_special_tokens)
            for i, enc, (start, end) in zip(rows, encodings, spans):
                ids = enc.ids
                if len(ids) > max_tokens:
                    ids = _truncate_content(enc, start, end, max_tokens, k)
                out[i] = list(ids)
        return out  # type: ignore[return-value]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad -> input_ids (B, T) int64, attention_mask (B, T) int64."""
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return ids, mask


class TorchEncoder:
    """``mose_lsp`` encoder interface over a live multi-exit model (for evaluation)."""

    def __init__(self, model, tokenizer_file: str | Path, max_tokens: int | None = None,
                 batch_size: int = 64, device: str | torch.device | None = None,
                 name: str | None = None):
        self.model = model
        self.inputs = InputTokenizer.for_model(model, tokenizer_file)
        info = model.export_info()
        self.max_tokens = int(max_tokens or info.max_tokens)
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.name = name or info.name

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> TorchEncoder:
        from .checkpoint import CheckpointError, load_checkpoint

        model, tokenizer = load_checkpoint(path)
        if tokenizer is None:
            raise CheckpointError(f"{path} has no tokenizer.json; it cannot be evaluated")
        return cls(model, tokenizer, **kwargs)

    @property
    def exits(self) -> tuple[int, ...]:
        return tuple(self.model.exit_layers)

    @property
    def index_exit(self) -> int:
        return self.exits[0]

    @property
    def rerank_exit(self) -> int:
        return self.exits[-1]

    def dim(self, exit: int) -> int:
        probe = self.encode(["x"], "code", exit)
        return int(probe.shape[1])

    def tokenize(self, texts: Sequence[str], kind: str, exit: int,
                 langs: Sequence[str] | None = None) -> list[list[int]]:
        return self.inputs.encode(list(texts), kind, self.max_tokens, langs)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], kind: str, exit: int,
               langs: Sequence[str] | None = None) -> np.ndarray:
        """(N, D) float32 embeddings of ``texts`` at ``exit`` (inputs batched by length)."""
        if exit not in self.exits:
            raise ValueError(f"exit {exit} is not one of the model's exits {self.exits}")
        ids = self.tokenize(texts, kind, exit, langs)
        was_training = self.model.training
        self.model.eval()
        try:
            out: np.ndarray | None = None
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for begin in range(0, len(order), self.batch_size):
                batch = order[begin:begin + self.batch_size]
                input_ids, mask = self.inputs.pad([ids[i] for i in batch])
                emb = self.model(input_ids.to(self.device), mask.to(self.device), (exit,))[exit]
                emb = emb.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(ids), emb.shape[1]), dtype=np.float32)
                out[batch] = emb
            return out if out is not None else np.zeros((0, 0), dtype=np.float32)
        finally:
            self.model.train(was_training)


def evaluate_suites(encoder, suites: Sequence[str | Path], max_queries: int | None = None,
                    exits: Sequence[int] | None = None) -> dict:
    """Score retrieval suites (shared/eval format) per exit with ``mose_lsp.evaluate``.

    Returns ``{"mrr": {suite: {"exit<k>": mrr}}, "results": <results_to_json>}`` (fractions).
    """
    from mose_lsp.evaluate import evaluate, load_suites, results_to_json

    results = []
    for path in suites:
        for suite in load_suites(path):
            results.append(evaluate(encoder, suite.limit(max_queries), exits=exits))
    table = {r.suite: {f"exit{e.exit}": e.metrics.mrr for e in r.exits} for r in results}
    return {"mrr": table, "results": results_to_json(results)}


def checkpoint_encoder(source: str, threads: int | None = None) -> TorchEncoder | None:
    """``mose.encoders`` plugin factory (see ``mose_lsp.eval_cli``): a ``TorchEncoder`` for a
    training checkpoint folder (``mose_checkpoint.json``), a run folder holding ``final/``, or a
    released ModularStarEncoder folder; None for anything else."""
    from .checkpoint import CHECKPOINT_FILE

    root = Path(source).expanduser()
    if not root.is_dir():
        return None
    if not (root / CHECKPOINT_FILE).is_file() and (root / "final" / CHECKPOINT_FILE).is_file():
        root = root / "final"
    if not ((root / CHECKPOINT_FILE).is_file() or (root / "config.json").is_file()):
        return None
    if threads:
        torch.set_num_threads(int(threads))
    return TorchEncoder.from_checkpoint(root)

"""A torch-backed encoder with the runtime's small encoder interface.

``TorchEncoder.encode(texts, kind, exit, langs) -> (N, D) float32`` does what the runtime's
``mose_lsp.encoder.ModelEncoder`` does over ONNX files, on a live ``MultiExitEncoder``: render the
model's input template (``ExportInfo.text_template`` / ``code_template``), tokenise, cut only the
content when too long and pad, all through the runtime's ``mose_lsp.model_inputs``, then run the
exit. So the evaluation code in ``mose_lsp`` scores a training checkpoint and an exported model
directory the same way, and the fine-tuning recipe tokenises its pairs exactly as the product
will.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mose_lsp.model_dir import InputFormat
from mose_lsp.model_inputs import InputTokenizer


def model_inputs(model, tokenizer_file: str | Path) -> InputTokenizer:
    """The runtime's input tokenizer (``mose_lsp.model_inputs``) configured as the model will be
    exported: its templates, special tokens and pad id (``model.export_info()``)."""
    info = model.export_info()
    return InputTokenizer.from_file(
        tokenizer_file, InputFormat(info.text_template, info.add_special_tokens),
        InputFormat(info.code_template, info.add_special_tokens), info.pad_id)


def padded_tensors(inputs: InputTokenizer,
                   rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs.pad(rows)`` as torch tensors: input_ids (B, T), attention_mask (B, T) int64."""
    ids, mask = inputs.pad(rows)
    return torch.from_numpy(ids), torch.from_numpy(mask)


class TorchEncoder:
    """``mose_lsp`` encoder interface over a live multi-exit model (for evaluation)."""

    def __init__(self, model, tokenizer_file: str | Path, max_tokens: int | None = None,
                 batch_size: int = 64, device: str | torch.device | None = None,
                 name: str | None = None):
        self.model = model
        self.inputs = model_inputs(model, tokenizer_file)
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

    def foreground(self) -> contextlib.AbstractContextManager[None]:
        """What the runtime's searcher enters around a query (``ModelEncoder.foreground``);
        a torch encoder runs no background work to pause."""
        return contextlib.nullcontext()

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
                input_ids, mask = padded_tensors(self.inputs, [ids[i] for i in batch])
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

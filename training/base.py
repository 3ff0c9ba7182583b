"""What every multi-exit encoder in mose_training provides.

Two families implement it: the MoSE StarCoder2-style encoder (``model.py``) and the adapter
that puts exits on a pretrained BERT-family encoder (``hf_adapter.py``). Export, evaluation
and the recipes only use this interface.

Conventions
- Layers are 1-based: exit ``k`` reads the output of transformer block ``k``.
- ``forward(input_ids, attention_mask, exits=None)`` runs the blocks only up to the deepest
  requested exit (so a shallow exit really costs less) and returns a ``MultiExitOutput``.
- ``exit_module(layer)`` returns a small ``nn.Module`` whose ``forward(input_ids,
  attention_mask)`` returns the (B, D) embedding of that exit (pooled, projected, normalised),
  computing no block above ``layer``: the unit that is exported to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class MultiExitOutput:
    """Every requested exit, shallow to deep (HF ``ModelOutput`` style, typed)."""

    exits: tuple[int, ...]  # layers, ascending
    hidden_states: tuple[torch.Tensor, ...]  # per exit (B, T, H): the states the exit reads
    pooled: tuple[torch.Tensor, ...]  # per exit (B, H)
    embeddings: tuple[torch.Tensor, ...]  # per exit (B, D): projected and L2-normalised

    def __getitem__(self, layer: int) -> torch.Tensor:
        """Embedding of the exit at ``layer``."""
        return self.embeddings[self.exits.index(layer)]


@dataclass(frozen=True)
class ExportInfo:
    """What the exporter needs to write a model directory's manifest."""

    name: str
    base_model: str
    license: str
    attribution: str
    num_layers: int
    pooling: str  # "mean" | "cls" | "last"
    max_tokens: int
    pad_id: int
    text_template: str  # contains "{input}"; may contain "{lang}"
    code_template: str
    add_special_tokens: bool
    extra: dict[str, Any] = field(default_factory=dict)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H). ``last`` takes the last non-pad token (right padding)."""
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = attention_mask.long().sum(1) - 1  # (B,)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}: expected mean, cls or last")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


class MultiExitEncoder(nn.Module):
    """Base class: subclasses set ``exit_layers`` and implement the three methods below."""

    exit_layers: tuple[int, ...]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                exits: tuple[int, ...] | None = None) -> MultiExitOutput:
        raise NotImplementedError

    def exit_module(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def export_info(self) -> ExportInfo:
        raise NotImplementedError

    def _check_exits(self, exits: tuple[int, ...] | None) -> tuple[int, ...]:
        chosen = tuple(sorted(set(exits))) if exits else tuple(self.exit_layers)
        unknown = [e for e in chosen if e not in self.exit_layers]
        assert not unknown, f"exits {unknown} not in this model's exits {self.exit_layers}"
        return chosen

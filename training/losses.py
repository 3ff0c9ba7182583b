"""Losses for multi-exit training: small composable modules over pure functions of embeddings.

The maths lives in pure functions (``info_nce``, ``similarity_distillation``,
``embedding_anchor``, ``mlm_loss``, ``icc_loss``, ``exit_weights``); the modules validate their
arguments once, in ``__init__``, and only call those functions. No loss touches a model.

Pretraining (MoSE, per exit ``i``):  L = sum_i w_i * (MLM_i + ICC_i),  w_i = layer_i / L_total.
Fine-tuning (per exit ``i``):        L = sum_i w_i * InfoNCE_i
                                         + distill_weight * sum_{i < deepest} Distill(deepest -> i)
                                         + anchor_weight  * sum_i Anchor(i, frozen teacher)
The distillation and anchor terms carry their own coefficient and are NOT multiplied by the exit
weight (the anchor's default is a flat 1.0 at every exit, so a shallow exit is held to the
teacher as firmly as the deep one).

Under ``torch.distributed`` the contrastive terms gather embeddings from every rank, keeping the
gradient (``gather_with_grad``): each rank scores its own rows against the global batch, and since
DDP averages gradients, the update equals a single process's update on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

# --------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums every rank's gradient for a slice into its owner.

    Works on every backend (an all-reduce, no reduce-scatter needed). All ranks must pass tensors
    of the same shape.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # (B, D) -> (W * B, D)
        rank, world = _world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # (W * B, D) -> (B, D)
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, D) local rows -> ((W * B, D) rows of every rank in rank order, offset of the local rows).

    Identity (offset 0) outside torch.distributed. Every rank must hold the same B.
    """
    rank, world = _world()
    if world == 1:
        return x, 0
    return _GatherWithGrad.apply(x), rank * x.shape[0]


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------


def exit_weights(exit_layers: Sequence[int], scheme: str | Sequence[float] = "linear",
                 num_layers: int | None = None) -> tuple[float, ...]:
    """Weight of each exit.

    ``"linear"``: ``layer / num_layers`` (the paper: exits 4, 9, 18, 27, 36 of 36 get 4/36 ... 1);
    ``num_layers`` defaults to the deepest exit. ``"uniform"``: 1 each. A sequence: taken as is.
    """
    layers = tuple(int(e) for e in exit_layers)
    if not layers:
        raise ValueError("exit_layers is empty")
    if any(e <= 0 for e in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"exit_layers must be distinct positive layers, got {layers}")
    if isinstance(scheme, str):
        if scheme == "linear":
            total = max(layers) if num_layers is None else int(num_layers)
            if total < max(layers):
                raise ValueError(f"num_layers {total} is below the deepest exit {max(layers)}")
            return tuple(e / total for e in layers)
        if scheme == "uniform":
            return tuple(1.0 for _ in layers)
        raise ValueError(f"unknown exit weighting {scheme!r}: expected 'linear', 'uniform' or "
                         f"a list of {len(layers)} numbers")
    weights = tuple(float(w) for w in scheme)
    if len(weights) != len(layers):
        raise ValueError(f"{len(weights)} exit weights given for {len(layers)} exits {layers}")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"exit weights must be non-negative and not all zero, got {weights}")
    return weights


def info_nce(q: torch.Tensor, d: torch.Tensor, scale: float, symmetric: bool = True, *,
             all_q: torch.Tensor | None = None, all_d: torch.Tensor | None = None,
             offset: int = 0) -> torch.Tensor:
    """CLIP-style InfoNCE over in-batch negatives.

    Args:
        q: (B, D) query embeddings (L2-normalised), row ``i`` matches ``d[i]``.
        d: (B, D) document embeddings (L2-normalised).
        scale: logit scale (inverse temperature) applied to cosine similarities.
        symmetric: average the q->d and d->q cross entropies; otherwise q->d only.
        all_q, all_d: (N, D) candidates (default ``q``, ``d``): the global batch under
            data parallelism, in which the local row ``i`` is candidate ``offset + i``.
    Returns:
        scalar: mean over the local rows.
    """
    assert q.dim() == 2 and q.shape == d.shape, f"q {tuple(q.shape)} and d {tuple(d.shape)} must be (B, D)"
    all_q = q if all_q is None else all_q
    all_d = d if all_d is None else all_d
    labels = torch.arange(q.shape[0], device=q.device) + offset  # (B,)
    q_to_d = F.cross_entropy(scale * q @ all_d.T, labels)  # logits (B, N)
    if not symmetric:
        return q_to_d
    d_to_q = F.cross_entropy(scale * d @ all_q.T, labels)  # logits (B, N)
    return 0.5 * (q_to_d + d_to_q)


def similarity_distillation(student_q: torch.Tensor, student_d: torch.Tensor,
                            teacher_q: torch.Tensor, teacher_d: torch.Tensor,
                            temperature: float, kind: str = "kl", symmetric: bool = True, *,
                            all_student: tuple[torch.Tensor, torch.Tensor] | None = None,
                            all_teacher: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> torch.Tensor:
    """Match a student's in-batch similarity distribution to a (detached) teacher's.

    Args:
        student_q, student_d: (B, D) the shallow exit's embeddings.
        teacher_q, teacher_d: (B, D') the teacher's (deepest exit's) embeddings; detached here.
        temperature: similarities are divided by it before the softmax (0.05 = scale 20).
        kind: ``"kl"``: KL(teacher || student) of the row softmaxes (no T^2 factor);
            ``"mse"``: mean squared error between the similarity matrices.
        symmetric: also over the d->q direction (rows of the transposed matrix), averaged.
        all_student, all_teacher: ((N, D), (N, D)) global candidates (q, d) under data
            parallelism; default the local ones.
    Returns:
        scalar: mean over local rows; 0 when student equals teacher.
    """
    tq, td = teacher_q.detach(), teacher_d.detach()
    sq_all, sd_all = all_student if all_student is not None else (student_q, student_d)
    tq_all, td_all = all_teacher if all_teacher is not None else (tq, td)
    tq_all, td_all = tq_all.detach(), td_all.detach()
    pairs = [(student_q @ sd_all.T, tq @ td_all.T)]  # (B, N) each
    if symmetric:
        pairs.append((student_d @ sq_all.T, td @ tq_all.T))
    losses = []
    for s, t in pairs:
        if kind == "kl":
            log_p_s = F.log_softmax(s / temperature, dim=-1)
            log_p_t = F.log_softmax(t / temperature, dim=-1)
            losses.append(F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean"))
        elif kind == "mse":
            losses.append(F.mse_loss(s, t))
        else:
            raise ValueError(f"unknown distillation kind {kind!r}: expected 'kl' or 'mse'")
    return torch.stack(losses).mean()


def embedding_anchor(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``2 - 2 cos(student_i, teacher_i)`` (the squared distance of unit vectors).

    Args:
        student: (B, D) embeddings of the trained exit.
        teacher: (B, D) embeddings of a frozen teacher (detached here).
    Returns:
        scalar in [0, 4]; 0 when every student row points the same way as the teacher's.
    """
    assert student.shape == teacher.shape, (
        f"anchor needs the same shapes, got student {tuple(student.shape)} and teacher "
        f"{tuple(teacher.shape)}")
    cos = F.cosine_similarity(student, teacher.detach(), dim=-1)  # (B,)
    return (2.0 - 2.0 * cos).mean()


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-language-model cross entropy.

    Args:
        logits: (B, T, V) or (N, V) scores; the leading dims must match ``labels``.
        labels: (B, T) or (N,) token ids, ``-100`` where no prediction is scored.
    Returns:
        scalar: mean over scored positions (0, still differentiable, when there are none).
    """
    assert logits.shape[:-1] == labels.shape, (
        f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX)


def icc_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """In-context classification: 2-way cross entropy ("are these snippets from one repository?").

    Args:
        logits: (B, 2).
        labels: (B,) in {0, 1} (1 = same repository), ``-100`` to skip a row.
    Returns:
        scalar.
    """
    assert logits.dim() == 2 and logits.shape[-1] == 2, f"ICC logits must be (B, 2), got {tuple(logits.shape)}"
    assert labels.shape == logits.shape[:1], f"ICC labels must be (B,), got {tuple(labels.shape)}"
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------------------------
# typed outputs
# --------------------------------------------------------------------------------------------


@dataclass
class ExitLoss:
    """One exit's part of a multi-exit loss."""

    layer: int
    weight: float  # exit weight applied to the base loss
    base: torch.Tensor  # scalar: the base loss at this exit, unweighted
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts, unweighted
    total: torch.Tensor | None = None  # scalar: this exit's contribution to the overall total


@dataclass
class MultiExitLossOutput:
    """The overall loss and its breakdown; ``sum(e.total for e in exits) == total``."""

    total: torch.Tensor
    exits: tuple[ExitLoss, ...]

    def exit(self, layer: int) -> ExitLoss:
        for e in self.exits:
            if e.layer == layer:
                return e
        raise KeyError(f"no exit {layer}; exits: {[e.layer for e in self.exits]}")

    def add_term(self, layer: int, name: str, value: torch.Tensor, coefficient: float) -> None:
        """Add ``coefficient * value`` to exit ``layer``'s contribution and to the total."""
        e = self.exit(layer)
        e.terms[name] = value
        e.total = e.total + coefficient * value
        self.total = self.total + coefficient * value

    def as_floats(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers for logging: ``loss``, ``exit{k}/loss``, ``exit{k}/{term}``."""
        out = {f"{prefix}loss": float(self.total.detach())}
        for e in self.exits:
            out[f"{prefix}exit{e.layer}/loss"] = float(e.base.detach())
            for name, value in e.terms.items():
                out[f"{prefix}exit{e.layer}/{name}"] = float(value.detach())
        return out


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE over in-batch negatives (sentence-transformers' MNRL, CLIP).

    ``forward(q (B, D), d (B, D)) -> scalar``. Under torch.distributed (and ``gather=True``) the
    negatives are the global batch.
    """

    def __init__(self, scale: float = 20.0, symmetric: bool = True, gather: bool = True):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale, self.symmetric, self.gather = float(scale), bool(symmetric), bool(gather)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.gather and _world()[1] > 1:
            all_q, offset = gather_with_grad(q)
            all_d, _ = gather_with_grad(d)
            return info_nce(q, d, self.scale, self.symmetric, all_q=all_q, all_d=all_d,
                            offset=offset)
        return info_nce(q, d, self.scale, self.symmetric)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, symmetric={self.symmetric}"


class SimilarityDistillation(nn.Module):
    """In-batch similarity distillation from a detached teacher exit to a student exit.

    ``forward(student_q, student_d, teacher_q, teacher_d) -> scalar`` (all (B, D)).
    """

    KINDS = ("kl", "mse")

    def __init__(self, kind: str = "kl", temperature: float = 0.05, symmetric: bool = True,
                 gather: bool = True):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown distillation kind {kind!r}: expected one of {self.KINDS}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.kind, self.temperature = kind, float(temperature)
        self.symmetric, self.gather = bool(symmetric), bool(gather)

    def forward(self, student_q: torch.Tensor, student_d: torch.Tensor,
                teacher_q: torch.Tensor, teacher_d: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.gather and _world()[1] > 1:
            kwargs["all_student"] = (gather_with_grad(student_q)[0], gather_with_grad(student_d)[0])
            kwargs["all_teacher"] = (gather_with_grad(teacher_q.detach())[0],
                                     gather_with_grad(teacher_d.detach())[0])
        return similarity_distillation(student_q, student_d, teacher_q, teacher_d,
                                       self.temperature, self.kind, self.symmetric, **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, temperature={self.temperature}, symmetric={self.symmetric}"


class EmbeddingAnchor(nn.Module):
    """``2 - 2 cos`` to a frozen teacher's embeddings. ``(B, D), (B, D) -> scalar``."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return embedding_anchor(student, teacher)


class PretrainingLoss(nn.Module):
    """One exit's MoSE pretraining loss: ``MLM + icc_weight * ICC``.

    ``forward(mlm_logits, mlm_labels, icc_logits, icc_labels) -> {"mlm": scalar, "icc": scalar}``
    (the multi-exit wrapper sums the dict with these coefficients).
    """

    def __init__(self, mlm_weight: float = 1.0, icc_weight: float = 1.0):
        super().__init__()
        if mlm_weight < 0 or icc_weight < 0 or mlm_weight + icc_weight <= 0:
            raise ValueError(f"mlm_weight {mlm_weight} and icc_weight {icc_weight} must be "
                             f"non-negative and not both zero")
        self.coefficients = {"mlm": float(mlm_weight), "icc": float(icc_weight)}

    def forward(self, mlm_logits: torch.Tensor, mlm_labels: torch.Tensor,
                icc_logits: torch.Tensor, icc_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mlm": mlm_loss(mlm_logits, mlm_labels), "icc": icc_loss(icc_logits, icc_labels)}


class MultiExitLoss(nn.Module):
    """Weighted sum of a base loss applied at every exit (sentence-transformers' MatryoshkaLoss,
    over layers instead of dimensions).

    ``forward(per_exit)``: ``per_exit[i]`` holds the arguments of ``base_loss`` for
    ``exit_layers[i]`` (a tuple of positional arguments, or a mapping of keyword arguments).
    The base loss returns a scalar, or a dict of named scalars combined with its
    ``coefficients`` attribute (1 each when it has none). Returns a ``MultiExitLossOutput``.
    """

    def __init__(self, base_loss: nn.Module, exit_layers: Sequence[int],
                 weights: str | Sequence[float] = "linear", num_layers: int | None = None):
        super().__init__()
        self.base_loss = base_loss
        self.exit_layers = tuple(int(e) for e in exit_layers)
        self.weights = exit_weights(self.exit_layers, weights, num_layers)

    def forward(self, per_exit: Sequence[tuple | Mapping]) -> MultiExitLossOutput:
        if len(per_exit) != len(self.exit_layers):
            raise ValueError(f"got inputs for {len(per_exit)} exits, expected "
                             f"{len(self.exit_layers)} ({self.exit_layers})")
        exits, total = [], None
        for layer, weight, args in zip(self.exit_layers, self.weights, per_exit):
            value = self.base_loss(**args) if isinstance(args, Mapping) else self.base_loss(*args)
            terms: dict[str, torch.Tensor] = {}
            if isinstance(value, Mapping):
                coefficients = getattr(self.base_loss, "coefficients", {})
                terms = dict(value)
                value = sum(coefficients.get(k, 1.0) * v for k, v in terms.items())
            contribution = weight * value
            exits.append(ExitLoss(layer, weight, value, terms, contribution))
            total = contribution if total is None else total + contribution
        return MultiExitLossOutput(total, tuple(exits))

    def extra_repr(self) -> str:
        return f"exit_layers={self.exit_layers}, weights={self.weights}"


class RetrievalLoss(nn.Module):
    """The fine-tuning objective over all exits: weighted InfoNCE plus optional distillation terms.

    ``forward(q, d, teacher_q=None, teacher_d=None)``: ``q[i]``, ``d[i]`` are (B, D) embeddings
    of exit ``exit_layers[i]``; ``teacher_q``/``teacher_d`` are (B, D) embeddings of a frozen
    teacher, needed when ``anchor`` is set. The similarity distillation teaches every shallower
    exit from the deepest exit of the same forward pass (detached).
    """

    def __init__(self, exit_layers: Sequence[int], weights: str | Sequence[float] = "linear",
                 num_layers: int | None = None, contrastive: InfoNCELoss | None = None,
                 distill: SimilarityDistillation | None = None, distill_weight: float = 1.0,
                 anchor: EmbeddingAnchor | None = None,
                 anchor_weight: float | Sequence[float] = 1.0):
        super().__init__()
        n_exits = len(tuple(exit_layers))
        anchor_weights = ([float(anchor_weight)] * n_exits
                          if isinstance(anchor_weight, (int, float)) else
                          [float(w) for w in anchor_weight])
        if len(anchor_weights) != n_exits:
            raise ValueError(f"anchor_weight lists {len(anchor_weights)} weights for "
                             f"{n_exits} exits")
        if distill_weight < 0 or min(anchor_weights) < 0:
            raise ValueError("distill_weight and anchor_weight must be non-negative")
        self.multi = MultiExitLoss(contrastive or InfoNCELoss(), exit_layers, weights, num_layers)
        self.distill, self.distill_weight = distill, float(distill_weight)
        # one anchor coefficient per exit (a single float: the same at every exit)
        self.anchor, self.anchor_weights = anchor, anchor_weights

    @property
    def exit_layers(self) -> tuple[int, ...]:
        return self.multi.exit_layers

    def forward(self, q: Sequence[torch.Tensor], d: Sequence[torch.Tensor],
                teacher_q: torch.Tensor | None = None,
                teacher_d: torch.Tensor | None = None) -> MultiExitLossOutput:
        out = self.multi(list(zip(q, d)))
        for e in out.exits:
            e.terms["info_nce"] = e.base
        layers = self.exit_layers
        deepest = layers.index(max(layers))
        if self.distill is not None:
            for i, layer in enumerate(layers):
                if i != deepest:
                    value = self.distill(q[i], d[i], q[deepest].detach(), d[deepest].detach())
                    out.add_term(layer, "distill", value, self.distill_weight)
        if self.anchor is not None:
            if teacher_q is None or teacher_d is None:
                raise ValueError("the anchor term needs the teacher's embeddings")
            for i, layer in enumerate(layers):
                # both sides: query and code embeddings each held near the teacher's
                value = self.anchor(q[i], teacher_q) + self.anchor(d[i], teacher_d)
                out.add_term(layer, "anchor", value, self.anchor_weights[i])
        return out

"""Retrieval fine-tuning recipe: symmetric InfoNCE at every exit, for both model families.

Each batch mixes text->code and code->code pairs (whatever the pairs files hold). Per exit ``i``
(its own projection head, provided by the model) the loss is CLIP-style symmetric InfoNCE over
in-batch negatives, gathered across ranks under data parallelism; the total weights exits by
``layer / num_layers`` (``loss.exit_weights``). Optional terms (``training/losses.py``):

- ``loss.distill``: KL between the deepest exit's in-batch similarity distribution (detached)
  and each shallower exit's;
- ``loss.anchor``: ``2 - 2 cos`` of every exit to a frozen copy of the starting model's deepest
  exit, on queries and code: it keeps the deep exit from forgetting what the starting model
  knew (docs/results/distillation-ablation.md: without it CoSQA falls 4 points at exit 6).

Pairs files are JSONL, one pair a line (``training/data/pairs.py`` writes them)::

    {"query": str, "code": str, "kind": "text" | "code", "lang": str, "lang_query": str?,
     "group": str?, ...}

``lang`` is the code's language; ``lang_query`` (or ``query_lang``) that of a code query
(default ``lang``). Pairs sharing a ``group`` (variants of one function) never meet in one
batch: batches are drawn over groups and each epoch uses one pair of each group. Inputs
are rendered with the model's templates (``ExportInfo.text_template`` / ``code_template``) and
truncated as the runtime does (``training/evaluation.py``), to ``data.query_max_tokens`` and
``data.code_max_tokens``. Accumulated micro-batches are independent InfoNCE batches (no
gradient cache).

An evaluation hook scores the given retrieval suites (shared/eval format) per exit at
``eval.every`` steps and at the end, through ``mose_lsp.evaluate`` with a ``TorchEncoder``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mose_lsp.errors import ConfigError, MoseError

from ..evaluation import TorchEncoder, model_inputs, padded_tensors
from ..losses import EmbeddingAnchor, InfoNCELoss, RetrievalLoss, SimilarityDistillation
from . import common
from .common import ModelConfig, OptimConfig, TrainConfig, log

# ============================================================================================
# config
# ============================================================================================


@dataclass
class FinetuneDataConfig:
    train: list[str] = field(default_factory=list)  # pairs JSONL files
    query_max_tokens: int = 64  # longest query input, template included
    code_max_tokens: int = 256  # longest code input, template included
    kinds: list[str] | None = None  # keep only these pair kinds ("text", "code"); None: all
    max_pairs: int | None = None  # use the first N pairs (after filtering)
    variants: list[str] | None = None  # keep only these pair shapes ("variant" field); None: all


@dataclass
class DistillConfig:
    kind: str = "kl"  # "kl" (KL of row softmaxes) | "mse" (of similarity matrices)
    temperature: float = 0.05  # on cosine similarities (0.05 = scale 20)
    weight: float = 1.0  # coefficient of each shallower exit's term (not exit-weighted)


@dataclass
class AnchorConfig:
    weight: float = 1.0  # coefficient of each exit's 2 - 2cos term (queries + code)


@dataclass
class FinetuneLossConfig:
    scale: float = 20.0  # InfoNCE logit scale on cosine similarities
    symmetric: bool = True  # average q->d and d->q
    exit_weights: str | list[float] = "linear"  # "linear" (layer / num_layers), "uniform", list
    num_layers: int | None = None  # L of layer / L; None: the model's depth
    distill: DistillConfig | None = None  # similarity distillation from the deepest exit
    anchor: AnchorConfig | None = None  # embedding anchor to the frozen starting model


@dataclass
class EvalConfig:
    suites: list[str] = field(default_factory=list)  # suite folders (corpus.jsonl, queries.jsonl)
    every: int = 0  # steps between evaluations (0: at the end only, when suites are given)
    max_tokens: int = 256  # input length for evaluation
    batch_size: int = 64
    max_queries: int | None = None  # score only the first N queries of each suite (speed)


@dataclass
class FinetuneConfig:
    """``mose train finetune CONFIG``: every field, with its default."""

    output_dir: str = "runs/finetune"
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        family="hf-adapter", base="all-minilm-l6-v2", exits=[2, 6]))
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    loss: FinetuneLossConfig = field(default_factory=FinetuneLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=2e-5, weight_decay=0.01, warmup_steps=30, schedule="linear"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        common.validate_common(self.optim, self.train)
        if self.data.query_max_tokens < 4 or self.data.code_max_tokens < 4:
            raise ConfigError("data.query_max_tokens and data.code_max_tokens must be >= 4")
        for kind in self.data.kinds or []:
            if kind not in ("text", "code"):
                raise ConfigError(f"data.kinds holds {kind!r}; expected text or code")
        if self.train.batch_size < 2:
            raise ConfigError("train.batch_size must be >= 2: InfoNCE needs in-batch negatives")


# ============================================================================================
# pairs
# ============================================================================================


@dataclass(frozen=True)
class Pair:
    query: str
    code: str
    kind: str  # "text" | "code"
    lang: str  # the code's language
    query_lang: str  # a code query's language ("" for text)
    group: str  # pairs of one group never share a batch (variants of one function)


def read_pairs(paths: list[str], kinds: list[str] | None = None,
               max_pairs: int | None = None,
               variants: list[str] | None = None) -> list[Pair]:
    """Pairs from JSONL files (see the module docstring); bad lines raise with file:line.
    ``variants`` keeps the pairs whose ``variant`` (the shape the miner gave them, e.g.
    ``docstring``, ``short``, ``with_docstring``) is listed."""
    if not paths:
        raise ConfigError("data.train is empty: list pairs JSONL files "
                          "(e.g. --set 'data.train=[pairs.jsonl]')")
    pairs: list[Pair] = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"pairs file {path} does not exist")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    kind = row.get("kind", "text")
                    if kind not in ("text", "code"):
                        raise ValueError(f"kind {kind!r} is not text or code")
                    lang = str(row.get("lang") or "")
                    query_lang = (str(row.get("lang_query") or row.get("query_lang") or lang)
                                  if kind == "code" else "")
                    group = row.get("group")
                    pair = Pair(str(row["query"]), str(row["code"]), kind, lang, query_lang,
                                f"{path}:{lineno}" if group is None else str(group))
                except (ValueError, KeyError, AttributeError, TypeError) as err:
                    raise ConfigError(f"{path}:{lineno}: not a pair ({err})") from err
                if kinds and pair.kind not in kinds:
                    continue
                if variants and row.get("variant") not in variants:
                    continue
                pairs.append(pair)
                if max_pairs is not None and len(pairs) >= max_pairs:
                    return pairs
    return pairs


def group_pairs(pairs: list[Pair]) -> list[list[int]]:
    """Pair indices by group, groups in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.group, []).append(i)
    return list(groups.values())


def pick_variant(seed: int, epoch: int, group: int, size: int) -> int:
    """Which pair of a group an epoch uses (a function of the position only)."""
    if size == 1:
        return 0
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + group)
    return int(torch.randint(size, (1,), generator=g))


# ============================================================================================
# the module that DDP/FSDP wrap: both sides in one forward
# ============================================================================================


class DualEncoder(nn.Module):
    """The same encoder over queries and code in one forward (one DDP step, not two)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, q_ids: torch.Tensor, q_mask: torch.Tensor, d_ids: torch.Tensor,
                d_mask: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """(B, Tq), (B, Tq), (B, Td), (B, Td) -> per exit (B, D) query and code embeddings."""
        q = self.encoder(q_ids, q_mask)
        d = self.encoder(d_ids, d_mask)
        return q.embeddings, d.embeddings


# ============================================================================================
# the recipe
# ============================================================================================


class FinetuneRecipe(common.Recipe):
    """setup -> train -> save_checkpoint (and resume)."""

    name = "finetune"

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.step = 0
        self.history: list[dict[str, Any]] = []  # one record per optimiser step (this rank)
        self.evaluations: list[dict[str, Any]] = []

    # -- setup -------------------------------------------------------------------------------

    def setup(self, resume_from: str | Path | None = None) -> FinetuneRecipe:
        cfg = self.config
        self.dist = common.init_distributed(cfg.train.device, cfg.train.threads)
        common.setup_logging(self.dist)
        common.seed_everything(cfg.seed)  # the same initial weights on every rank
        resume_dir = common.resolve_resume(resume_from) if resume_from else None
        self.pairs = read_pairs(cfg.data.train, cfg.data.kinds, cfg.data.max_pairs,
                                cfg.data.variants)
        if not self.pairs:
            raise ConfigError(f"no pairs in {cfg.data.train} pass data.kinds={cfg.data.kinds} "
                              f"and data.variants={cfg.data.variants}")

        model, tokenizer_path = common.build_model(cfg.model, pretraining=False)
        if tokenizer_path is None:
            raise ConfigError("the model has no tokenizer: set model.tokenizer or start from a "
                              "checkpoint that holds tokenizer.json")
        self.tokenizer_path = Path(tokenizer_path)
        self.teacher = None
        if cfg.loss.anchor is not None:  # the starting model, frozen (before any resume)
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False).to(self.dist.device)
        if resume_dir is not None:
            from ..checkpoint import load_checkpoint

            resumed, _ = load_checkpoint(resume_dir)
            model.load_state_dict(resumed.state_dict())
        self.encoder = model
        self.inputs = model_inputs(model, self.tokenizer_path)
        self._build_data()

        if cfg.train.gradient_checkpointing:
            common.enable_gradient_checkpointing(model)
        model.to(self.dist.device)
        self.module = common.wrap_model(DualEncoder(model), self.dist, cfg.train.distributed)
        common.seed_everything(cfg.seed + self.dist.rank)  # dropout differs across ranks
        self.optimizer = common.build_optimizer(
            self.module, cfg.optim, self.dist.device,
            sharded=self.dist.distributed and cfg.train.distributed == "fsdp")
        self.scheduler = common.build_scheduler(self.optimizer, cfg.optim, cfg.train.max_steps)
        self.loss = self._build_loss(model)
        self.metrics = common.MetricsLog(cfg.output_dir, self.dist.is_main,
                                         resume=resume_dir is not None)
        if resume_dir is not None:
            self.resume(resume_dir)
        return self

    def _build_loss(self, model: nn.Module) -> RetrievalLoss:
        lc = self.config.loss
        num_layers = lc.num_layers or model.export_info().num_layers
        distill = anchor = None
        if lc.distill is not None:
            distill = SimilarityDistillation(lc.distill.kind, lc.distill.temperature)
        if lc.anchor is not None:
            anchor = EmbeddingAnchor()
        try:
            return RetrievalLoss(
                model.exit_layers, lc.exit_weights, num_layers,
                contrastive=InfoNCELoss(lc.scale, lc.symmetric), distill=distill,
                distill_weight=lc.distill.weight if lc.distill else 0.0,
                anchor=anchor, anchor_weight=lc.anchor.weight if lc.anchor else 0.0)
        except ValueError as err:
            raise ConfigError(f"loss: {err}") from err

    def _build_data(self) -> None:
        cfg = self.config
        d = cfg.data
        limit = self.encoder.export_info().max_tokens
        if max(d.query_max_tokens, d.code_max_tokens) > limit:
            raise ConfigError(f"data.query_max_tokens/code_max_tokens exceed the model's "
                              f"{limit} tokens")
        try:
            self.query_ids = self.inputs.encode([p.query for p in self.pairs],
                                                [p.kind for p in self.pairs], d.query_max_tokens,
                                                [p.query_lang for p in self.pairs])
            self.code_ids = self.inputs.encode([p.code for p in self.pairs], "code",
                                               d.code_max_tokens, [p.lang for p in self.pairs])
        except MoseError as err:  # the template alone is longer than the limit
            raise ConfigError(f"{err} (raise data.query_max_tokens / data.code_max_tokens)") \
                from err
        self.groups = group_pairs(self.pairs)  # batches draw groups, one pair of each
        self.batches = common.ShardedBatches(len(self.groups), cfg.train.batch_size,
                                             seed=cfg.seed, rank=self.dist.rank,
                                             world_size=self.dist.world_size)

    # -- data --------------------------------------------------------------------------------

    def make_batch(self, groups: list[int], epoch: int = 0) -> dict[str, torch.Tensor]:
        """Tokenised pairs of a batch of groups (one pair per group, chosen per epoch):
        q_ids, q_mask (B, Tq) and d_ids, d_mask (B, Td), right padded."""
        seed = self.config.seed
        indices = [self.groups[g][pick_variant(seed, epoch, g, len(self.groups[g]))]
                   for g in groups]
        q_ids, q_mask = padded_tensors(self.inputs, [self.query_ids[i] for i in indices])
        d_ids, d_mask = padded_tensors(self.inputs, [self.code_ids[i] for i in indices])
        batch = {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask}
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}

    # -- train -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]):
        with common.autocast(self.dist, self.config.train.precision):
            q, d = self.module(batch["q_ids"], batch["q_mask"], batch["d_ids"], batch["d_mask"])
            teacher_q = teacher_d = None
            if self.teacher is not None:
                with torch.no_grad():
                    deepest = (max(self.teacher.exit_layers),)
                    teacher_q = self.teacher(batch["q_ids"], batch["q_mask"], deepest).embeddings[0]
                    teacher_d = self.teacher(batch["d_ids"], batch["d_mask"], deepest).embeddings[0]
        q = [x.float() for x in q]
        d = [x.float() for x in d]
        if teacher_q is not None:
            teacher_q, teacher_d = teacher_q.float(), teacher_d.float()
        return self.loss(q, d, teacher_q, teacher_d)

    def train(self) -> list[dict[str, Any]]:
        cfg = self.config
        self.module.train()
        ddp = isinstance(self.module, torch.nn.parallel.DistributedDataParallel)
        while self.step < cfg.train.max_steps:
            sums: dict[str, float] = {}
            for micro in range(cfg.train.grad_accum):
                groups = next(self.batches)
                batch = self.make_batch(groups, self.batches.position[0])
                last = micro == cfg.train.grad_accum - 1
                sync = contextlib.nullcontext() if (last or not ddp) else self.module.no_sync()
                with sync:
                    out = self.compute_loss(batch)
                    (out.total / cfg.train.grad_accum).backward()
                for k, v in out.as_floats().items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.train.grad_accum
            record = self._optimizer_step(sums)
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                self._log(record)
            if cfg.eval.suites and cfg.eval.every and self.step % cfg.eval.every == 0 \
                    and self.step < cfg.train.max_steps:
                self.evaluate()
            if cfg.train.save_every and self.step % cfg.train.save_every == 0 \
                    and self.step < cfg.train.max_steps:
                self.save_checkpoint()
        self.save_checkpoint(final=True)
        if cfg.eval.suites:
            self.evaluate()
        return self.history

    def _optimizer_step(self, sums: dict[str, float]) -> dict[str, Any]:
        lr, grad_norm = common.optimizer_step(self.module, self.optimizer, self.scheduler,
                                              self.config.optim.max_grad_norm)
        self.step += 1
        if not all(math.isfinite(v) for v in sums.values()):
            raise common.TrainingError(f"non-finite loss at step {self.step}: {sums}; lower "
                                       f"optim.lr or check the data")
        record = {"step": self.step, "lr": lr, "grad_norm": grad_norm, **sums}
        self.history.append(record)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        shown = {k: (common.all_reduce_mean(v, self.dist) if k == "loss" or k.startswith("exit")
                     else v) for k, v in record.items()}
        self.metrics.write(shown)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        """MRR (and the suite's other metrics) per exit on every suite, scored on rank 0.

        Every rank must call it. Under FSDP each rank holds only shards of the encoder, and a
        forward on one rank alone would wait forever for the others' all-gathers: the shards
        are gathered on every rank first and rank 0 scores an unsharded copy."""
        model = self.encoder
        if self.dist.distributed and self.config.train.distributed == "fsdp":
            state = common.full_state_dict(self.module, self.dist, "fsdp")  # every rank
            model = None
            if self.dist.is_main:
                from ..checkpoint import model_from_config

                model = model_from_config(self.encoder.kind, self.encoder.config_dict())
                model.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
                model.to(self.dist.device).eval()
            del state
        result = None
        if self.dist.is_main:
            from ..evaluation import evaluate_suites

            ec = self.config.eval
            encoder = TorchEncoder(model, self.tokenizer_path, max_tokens=ec.max_tokens,
                                   batch_size=ec.batch_size, device=self.dist.device)
            result = {"step": self.step,
                      **evaluate_suites(encoder, ec.suites, max_queries=ec.max_queries)}
            self.evaluations.append(result)
            self.metrics.write({"eval": result}, echo=False)
            log.info("eval step %d: %s", self.step, json.dumps(result.get("mrr", result)))
        common.barrier(self.dist)
        return result


def run(config: FinetuneConfig, resume_from: str | Path | None = None) -> FinetuneRecipe:
    """Set up, train, save; the CLI's entry."""
    return common.run_recipe(FinetuneRecipe(config), resume_from)


"""MoSE pretraining recipe: MLM + in-context classification (ICC) at every exit.

Per exit ``i`` (MOSE.md): ``L_i = MLM_i + ICC_i``; the total is ``sum_i w_i L_i`` with
``w_i = layer_i / num_layers`` by default (``loss.exit_weights``). The MLM and ICC heads are the
model's ``MoSEPretrainingHeads``, shared by all exits and conditioned on a learned exit
embedding. MLM picks 15% of the content tokens (never special tokens or padding) and replaces
80% of them with ``<mask>``, 10% with a random non-special token and leaves 10% unchanged. ICC
samples come from ``training/data/icc.py`` (windows of ``<sep>``-joined snippets from one
repository, or from two with probability ``p_different``; the head reads the pooled ``<cls>``).

The exits' projection heads are not part of the pretraining objective and stay frozen here.

Batch contract (what ``make_batch`` returns, tensors on the device)::

    input_ids       (B, T) int64   after MLM corruption
    attention_mask  (B, T) int64   1 on tokens, 0 on padding (right padded)
    labels          (B, T) int64   the original token where MLM scores a prediction, else -100
    icc_labels      (B,)   int64   1 = one repository, 0 = two

Recipe: ``PretrainRecipe(config).setup(resume_from)`` then ``.train()``; ``save_checkpoint``
writes ``<output_dir>/checkpoints/step-N`` (model + ``trainer_state.pt``), and the final model
goes to ``<output_dir>/final``. Resuming from a step checkpoint replays the exact same steps
(data position, MLM masks and RNG states are restored; masks are a function of the position).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mose_lsp.errors import ConfigError

from ..losses import IGNORE_INDEX, MultiExitLoss, PretrainingLoss
from . import common
from .common import ModelConfig, OptimConfig, TrainConfig

TOKENIZER_SPECIALS = ("<pad>", "<sep>", "<cls>", "<mask>")  # ids 0..3 of a trained tokenizer

# ============================================================================================
# config
# ============================================================================================


@dataclass
class PretrainDataConfig:
    """Where the ICC samples come from (``training/data``) and how MLM corrupts them."""

    sources: list[str] = field(default_factory=list)  # folders, git work trees/URLs, Stack JSONL/parquet
    languages: list[str] | None = None  # keep only these languages (None: every known one)
    context_length: int = 2048  # tokens per sample, <sep>s and the final <cls> included
    num_samples: int = 100_000  # ICC samples per epoch (each is a pure function of seed and index)
    p_different: float = 0.5  # probability that a sample mixes two repositories (label 0)
    negative_mode: str = "split"  # "split" | "mixed": how a two-repository sample is laid out
    snippet_unit: str = "window"  # "window" (line-aligned file windows) | "chunk" (runtime chunker)
    max_snippet_tokens: int | None = None  # None: a quarter of the context
    mlm_probability: float = 0.15  # share of content tokens scored by MLM
    mask_replace: float = 0.8  # of those: replaced by <mask>
    random_replace: float = 0.1  # of those: replaced by a random token (the rest stay unchanged)
    tokenizer_vocab_size: int | None = None  # train a byte-level BPE of this size on the corpus
    # when the model has no tokenizer (from-scratch presets); None: the model's vocab_size


@dataclass
class PretrainLossConfig:
    exit_weights: str | list[float] = "linear"  # "linear" (layer / num_layers), "uniform", a list
    num_layers: int | None = None  # L of layer / L; None: the model's depth
    mlm_weight: float = 1.0
    icc_weight: float = 1.0


@dataclass
class PretrainConfig:
    """``mose train pretrain CONFIG``: every field, with its default."""

    output_dir: str = "runs/pretrain"  # checkpoints, final model, metrics.jsonl
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="tiny"))
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=100))
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        common.validate_common(self.optim, self.train)
        d = self.data
        if not 0 < d.mlm_probability < 1:
            raise ConfigError(f"data.mlm_probability must be in (0, 1), got {d.mlm_probability}")
        if d.mask_replace < 0 or d.random_replace < 0 or d.mask_replace + d.random_replace > 1:
            raise ConfigError("data.mask_replace and data.random_replace must be non-negative "
                              "and sum to at most 1")
        if d.context_length < 8 or d.num_samples < 1:
            raise ConfigError("data.context_length must be >= 8 and data.num_samples >= 1")
        if not 0 <= d.p_different <= 1:
            raise ConfigError(f"data.p_different must be in [0, 1], got {d.p_different}")
        if d.negative_mode not in ("split", "mixed"):
            raise ConfigError(f"data.negative_mode {d.negative_mode!r} is not split or mixed")
        if d.snippet_unit not in ("window", "chunk"):
            raise ConfigError(f"data.snippet_unit {d.snippet_unit!r} is not window or chunk")


# ============================================================================================
# MLM corruption (pure)
# ============================================================================================


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, *, mask_id: int,
                random_ids: torch.Tensor, probability: float = 0.15, mask_replace: float = 0.8,
                random_replace: float = 0.1, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style MLM corruption.

    Args:
        input_ids: (B, T) token ids.
        maskable: (B, T) bool, True on content tokens (never special tokens or padding).
        mask_id: the ``<mask>`` id.
        random_ids: (K,) ids a random replacement is drawn from (non-special tokens).
        probability: share of maskable tokens selected for prediction.
        mask_replace, random_replace: of the selected, the share replaced by ``<mask>`` and by
            a random token; the rest are left unchanged.
    Returns:
        corrupted ids (B, T) and labels (B, T): the original id where selected, else -100.
    """
    assert input_ids.shape == maskable.shape, "input_ids and maskable must have the same shape"
    shape = input_ids.shape
    probs = torch.full(shape, probability, dtype=torch.float32) * maskable.cpu().float()
    selected = torch.bernoulli(probs, generator=generator).bool().to(input_ids.device)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    draw = torch.rand(shape, generator=generator).to(input_ids.device)
    to_mask = selected & (draw < mask_replace)
    to_random = selected & (draw >= mask_replace) & (draw < mask_replace + random_replace)
    picks = torch.randint(len(random_ids), shape, generator=generator)
    random_tokens = random_ids[picks].to(input_ids.device)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_tokens, corrupted)
    return corrupted, labels


def batch_seed(seed: int, epoch: int, index: int, rank: int) -> int:
    """The MLM generator's seed for one micro-batch: a function of the data position only."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + index) * 1_009 + rank) % (2 ** 63)


# ============================================================================================
# the module that DDP/FSDP wrap: encoder + shared heads in one forward
# ============================================================================================


@dataclass
class PretrainLogits:
    exits: tuple[int, ...]
    mlm_logits: tuple[torch.Tensor, ...]  # per exit (B, M, V): the scored positions only
    mlm_labels: torch.Tensor  # (B, M): their targets, -100 on filler slots
    icc_logits: tuple[torch.Tensor, ...]  # per exit (B, 2)


def gather_scored(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) MLM labels -> positions (B, M) of the scored tokens first (M = the most any row
    has; filler slots point at position 0) and their labels (B, M), -100 on filler slots."""
    scored = labels != IGNORE_INDEX  # (B, T)
    counts = scored.sum(dim=1)  # (B,)
    width = max(1, int(counts.max()))
    order = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, M)
    valid = torch.arange(width, device=labels.device)[None, :] < counts[:, None]  # (B, M)
    positions = torch.where(valid, order, torch.zeros_like(order))
    targets = torch.where(valid, labels.gather(1, positions), torch.full_like(positions,
                                                                              IGNORE_INDEX))
    return positions, targets


class MoSEPretrainingModule(nn.Module):
    """A MoSE encoder with its shared pretraining heads in one forward (the unit DDP/FSDP wrap).

    The MLM head only sees the scored positions (about 15% of the tokens), gathered per row,
    so the (B, T, V) logits of every exit are never materialised.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        assert getattr(encoder, "heads", None) is not None, "the encoder has no pretraining heads"
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> PretrainLogits:
        """(B, T) corrupted ids, (B, T) mask, (B, T) MLM labels (-100 where not scored)."""
        out = self.encoder(input_ids, attention_mask)
        positions, targets = gather_scored(labels)  # (B, M) each
        mlm, icc = [], []
        for hidden, pooled, layer in zip(out.hidden_states, out.pooled, out.exits):
            index = self.encoder.exit_layers.index(layer)
            picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            m, c = self.encoder.heads(picked, pooled, index)  # (B, M, V), (B, 2)
            mlm.append(m)
            icc.append(c)
        return PretrainLogits(out.exits, tuple(mlm), targets, tuple(icc))


# ============================================================================================
# tokenizer and data
# ============================================================================================


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    specials: Sequence[str] = TOKENIZER_SPECIALS):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``; ``specials`` get ids
    0, 1, ... in order (``<pad>``, ``<sep>``, ``<cls>``, ``<mask>``: the tiny preset's ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_repositories(cfg: PretrainDataConfig):
    """Read, filter and group the corpus sources into repositories (training/data/corpus.py)."""
    from ..data.corpus import DocumentFilter, filter_documents, group_by_repository, iter_documents

    if not cfg.sources:
        raise ConfigError("data.sources is empty: list corpus folders, git repositories or "
                          "Stack-shaped JSONL files (e.g. --set 'data.sources=[path/to/repo]')")
    keep = DocumentFilter(languages=frozenset(cfg.languages) if cfg.languages else None)
    docs = itertools.chain.from_iterable(iter_documents(s) for s in cfg.sources)
    repos = group_by_repository(filter_documents(docs, keep))
    if not repos:
        raise ConfigError(f"no usable source files in {cfg.sources}")
    return repos


# ============================================================================================
# the recipe
# ============================================================================================


class PretrainRecipe(common.Recipe):
    """setup -> train -> save_checkpoint (and resume)."""

    name = "pretrain"

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.step = 0
        self.history: list[dict[str, Any]] = []  # one record per optimiser step (this rank)

    # -- setup -------------------------------------------------------------------------------

    def setup(self, resume_from: str | Path | None = None) -> PretrainRecipe:
        cfg = self.config
        self.dist = common.init_distributed(cfg.train.device, cfg.train.threads)
        common.setup_logging(self.dist)
        common.seed_everything(cfg.seed)  # the same initial weights on every rank
        resume_dir = common.resolve_resume(resume_from) if resume_from else None
        self.repos = load_repositories(cfg.data)

        if resume_dir is not None:  # the checkpoint's weights and tokenizer
            model, tokenizer_path = common.build_model(
                dataclasses.replace(cfg.model, init_from=str(resume_dir), exits=None,
                                    tokenizer=None), pretraining=True)
        else:
            model, tokenizer_path = common.build_model(cfg.model, pretraining=True)
        if getattr(model, "kind", None) != "mose-starcoder2":
            raise ConfigError("pretraining needs the mose-starcoder2 family")
        self.encoder = model
        self.tokenizer, self.tokenizer_path = self._tokenizer(tokenizer_path)
        self._check_tokenizer()
        self._build_data()

        for p in (model.projection_heads.parameters() if model.projection_heads is not None else ()):
            p.requires_grad_(False)  # not part of the pretraining objective
        if cfg.train.gradient_checkpointing:
            common.enable_gradient_checkpointing(model)
        model.to(self.dist.device)
        self.module = common.wrap_model(MoSEPretrainingModule(model), self.dist,
                                        cfg.train.distributed)
        common.seed_everything(cfg.seed + self.dist.rank)  # dropout differs across ranks
        self.optimizer = common.build_optimizer(
            self.module, cfg.optim, self.dist.device,
            sharded=self.dist.distributed and cfg.train.distributed == "fsdp")
        self.scheduler = common.build_scheduler(self.optimizer, cfg.optim, cfg.train.max_steps)
        num_layers = cfg.loss.num_layers or model.config.num_hidden_layers
        self.loss = MultiExitLoss(PretrainingLoss(cfg.loss.mlm_weight, cfg.loss.icc_weight),
                                  model.exit_layers, cfg.loss.exit_weights, num_layers)
        self.metrics = common.MetricsLog(cfg.output_dir, self.dist.is_main,
                                         resume=resume_dir is not None)
        if resume_dir is not None:
            self.resume(resume_dir)
        return self

    def _tokenizer(self, path: Path | None):
        from tokenizers import Tokenizer

        if path is not None:
            return Tokenizer.from_file(str(path)), Path(path)
        config = self.encoder.config
        ids = [config.pad_token_id, config.sep_token_id, config.cls_token_id, config.mask_token_id]
        if ids != list(range(len(TOKENIZER_SPECIALS))):
            raise ConfigError("the model has no tokenizer (set model.tokenizer); a tokenizer is "
                              "trained on the corpus only for presets whose special ids are "
                              "pad=0, sep=1, cls=2, mask=3")
        size = self.config.data.tokenizer_vocab_size or config.vocab_size
        out = Path(self.config.output_dir) / "tokenizer.json"
        if self.dist.is_main:  # trained once; the other ranks read the same file
            texts = (d.content for r in self.repos for d in r.documents)
            out.parent.mkdir(parents=True, exist_ok=True)
            train_tokenizer(texts, size).save(str(out))
        common.barrier(self.dist)
        return Tokenizer.from_file(str(out)), out

    def _check_tokenizer(self) -> None:
        c, tok = self.encoder.config, self.tokenizer
        if tok.get_vocab_size() > c.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens, more than the "
                              f"model's vocab_size {c.vocab_size}")
        for name, want in (("<sep>", c.sep_token_id), ("<cls>", c.cls_token_id),
                           ("<mask>", c.mask_token_id)):
            if tok.token_to_id(name) != want:
                raise ConfigError(f"the tokenizer's {name} id is {tok.token_to_id(name)}, the "
                                  f"model expects {want}")

    def _build_data(self) -> None:
        from ..data.corpus import special_tokens
        from ..data.icc import ICCConfig, ICCDataset

        d, cfg = self.config.data, self.config
        if d.context_length > self.encoder.config.max_position_embeddings:
            raise ConfigError(f"data.context_length {d.context_length} exceeds the model's "
                              f"max_position_embeddings {self.encoder.config.max_position_embeddings}")
        self.specials = special_tokens(self.tokenizer, pad=self.encoder.config.pad_token_id)
        icc = ICCConfig(context_length=d.context_length, p_different=d.p_different,
                        max_snippet_tokens=d.max_snippet_tokens, negative_mode=d.negative_mode,
                        seed=cfg.seed)
        self.dataset = ICCDataset.from_repositories(self.repos, self.tokenizer, icc,
                                                    d.num_samples, unit=d.snippet_unit,
                                                    specials=self.specials)
        self.batches = common.ShardedBatches(len(self.dataset), cfg.train.batch_size,
                                             seed=cfg.seed, rank=self.dist.rank,
                                             world_size=self.dist.world_size)
        special = torch.tensor(sorted(self.specials.ids))
        vocab = torch.arange(self.tokenizer.get_vocab_size())
        self.random_ids = vocab[~torch.isin(vocab, special)]

    # -- data --------------------------------------------------------------------------------

    def make_batch(self, indices: list[int], position: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Collate ICC samples and corrupt them for MLM (see the batch contract above)."""
        from ..data.icc import collate_icc

        d = self.config.data
        raw = collate_icc([self.dataset[i] for i in indices])
        maskable = (raw["special_tokens_mask"] == 0) & (raw["attention_mask"] == 1)
        g = torch.Generator().manual_seed(batch_seed(self.config.seed, *position, self.dist.rank))
        ids, labels = mask_tokens(raw["input_ids"], maskable, mask_id=self.specials.mask,
                                  random_ids=self.random_ids, probability=d.mlm_probability,
                                  mask_replace=d.mask_replace, random_replace=d.random_replace,
                                  generator=g)
        batch = {"input_ids": ids, "attention_mask": raw["attention_mask"], "labels": labels,
                 "icc_labels": raw["icc_label"]}
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}

    # -- train -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]):
        with common.autocast(self.dist, self.config.train.precision):
            out = self.module(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return self.loss([(m, out.mlm_labels, c, batch["icc_labels"])
                          for m, c in zip(out.mlm_logits, out.icc_logits)])

    def train(self) -> list[dict[str, Any]]:
        cfg = self.config.train
        self.module.train()
        ddp = isinstance(self.module, torch.nn.parallel.DistributedDataParallel)
        while self.step < cfg.max_steps:
            sums: dict[str, float] = {}
            tokens = 0
            for micro in range(cfg.grad_accum):
                indices = next(self.batches)
                batch = self.make_batch(indices, self.batches.position)
                tokens += int(batch["attention_mask"].sum())
                last = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if (last or not ddp) else self.module.no_sync()
                with sync:
                    out = self.compute_loss(batch)
                    (out.total / cfg.grad_accum).backward()
                for k, v in out.as_floats().items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            record = self._optimizer_step(sums, tokens)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log(record)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.save_checkpoint()
        self.save_checkpoint(final=True)
        return self.history

    def _optimizer_step(self, sums: dict[str, float], tokens: int) -> dict[str, Any]:
        lr, grad_norm = common.optimizer_step(self.module, self.optimizer, self.scheduler,
                                              self.config.optim.max_grad_norm)
        self.step += 1
        if not all(math.isfinite(v) for v in sums.values()):
            raise common.TrainingError(f"non-finite loss at step {self.step}: {sums}; lower "
                                       f"optim.lr or check the data")
        record = {"step": self.step, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, **sums}
        self.history.append(record)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        shown = {k: (common.all_reduce_mean(v, self.dist) if k == "loss" or k.startswith("exit")
                     else v) for k, v in record.items()}
        self.metrics.write(shown)


def run(config: PretrainConfig, resume_from: str | Path | None = None) -> PretrainRecipe:
    """Set up, train, save; the CLI's entry."""
    return common.run_recipe(PretrainRecipe(config), resume_from)

"""What the pretraining and fine-tuning recipes share: typed configs, the optimiser and its
schedule, distributed setup, resumable data order, checkpoints with exact resume, logging.

Each recipe keeps its own explicit ``setup / train / save_checkpoint / resume`` (torchtune
style); this module holds only building blocks, no trainer class.

Config files are YAML mapped onto dataclasses (one source of truth for defaults, documented
per field); unknown keys are errors that name the key; ``--set a.b=value`` overrides parse the
value as YAML.

Checkpoint folder (``<output_dir>/checkpoints/step-0000100/``)::

    mose_checkpoint.json, model.safetensors, tokenizer.json   (training/checkpoint.py)
    trainer_state.pt      optimiser, scheduler, step, data position, RNG states of every rank
                          (tensors and primitive containers only: torch.load(weights_only=True))
    recipe_config.yaml    the resolved config the run used

(a MoSE model's shared pretraining heads are part of its state dict). The final model goes to
``<output_dir>/final/`` without trainer state; ``metrics.jsonl`` holds the logged steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import yaml
from torch import nn

from mose_lsp.errors import ConfigError, MoseError

from ..checkpoint import save_checkpoint

log = logging.getLogger("mose.train")


class TrainingError(MoseError):
    """Training cannot go on (for example the loss became NaN)."""


TRAINER_STATE = "trainer_state.pt"
RECIPE_CONFIG = "recipe_config.yaml"
CHECKPOINTS = "checkpoints"
FINAL = "final"
METRICS = "metrics.jsonl"
STATE_VERSION = 1

# ============================================================================================
# configs
# ============================================================================================


@dataclass
class ModelConfig:
    """Which multi-exit encoder to train."""

    family: str = "mose-starcoder2"  # "mose-starcoder2" (training/model.py) | "hf-adapter"
    preset: str | None = None  # mose-starcoder2: size preset ("tiny", ..., "1b")
    base: str | None = None  # hf-adapter: short name ("all-minilm-l6-v2") or a local HF folder
    exits: list[int] | None = None  # exit layers; None keeps the preset's / base's default
    projection: int | None = None  # hf-adapter: Linear head per exit of this size (None: no head)
    init_from: str | None = None  # a checkpoint folder to start from (overrides the fields above)
    tokenizer: str | None = None  # tokenizer.json; None: the base model's / checkpoint's own
    overrides: dict[str, Any] = field(default_factory=dict)  # more model config fields
    # Parameter-name prefixes left untrained (e.g. "backbone.embeddings", "backbone.encoder.
    # layer.0", "heads.2": a shallow exit kept exactly as it is while deeper layers train).
    freeze: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (MoSE: betas (0.9, 0.95), eps 1e-6, wd 0.1)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-6
    weight_decay: float = 0.1  # not applied to biases, norm weights and embedding tables
    schedule: str = "cosine"  # constant | linear | cosine | step, after a linear warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of lr
    step_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])  # "step": fractions
    step_gamma: float = 0.1  # "step": factor applied at each milestone
    max_grad_norm: float | None = 1.0  # gradient clipping; None disables it


@dataclass
class TrainConfig:
    """The loop: steps, batch, precision, parallelism, checkpoint and log cadence."""

    max_steps: int = 1000  # optimiser steps
    batch_size: int = 8  # sequences (pairs) per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints (0: only the final model)
    keep_checkpoints: int = 0  # keep only the newest N step checkpoints (0: all)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    gradient_checkpointing: bool = False
    distributed: str = "ddp"  # ddp | fsdp: used when launched with torchrun (WORLD_SIZE > 1)
    threads: int | None = None  # CPU intra-op threads per process (None: torch's default)


# ============================================================================================
# typed loading of YAML into dataclasses
# ============================================================================================


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses. Raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors: dict[Any, ConfigError] = {}
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors[option] = err
        # one real option, or a mapping for a section: its own error says which key is wrong
        sections = [o for o in errors if dataclasses.is_dataclass(o)]
        if len(errors) == 1 or (isinstance(value, Mapping) and len(sections) == 1):
            raise errors[sections[0] if len(errors) > 1 else next(iter(errors))]
        raise ConfigError(f"config key {key!r}: {value!r} fits none of "
                          f"{' | '.join(_type_name(o) for o in options)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return build_config(tp, value, prefix=f"{key}.")
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported annotation {tp!r}")


def build_config(cls: type, data: Mapping[str, Any], prefix: str = ""):
    """A dataclass instance from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}; "
                          f"known keys here: {', '.join(prefix + n for n in names)}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as err:  # a required field without a default is missing
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'}: {err}") from err


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err
    return data


def load_config(cls: type, path: str | Path | None, overrides: Sequence[str] = ()):
    """Read a YAML file (or start empty), apply overrides, build and validate ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config sections")
        data = loaded or {}
    apply_overrides(data, overrides)
    config = build_config(cls, data)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def validate_common(optim: OptimConfig, train: TrainConfig) -> None:
    """Checks shared by both recipes' configs."""
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {optim.lr}")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {optim.betas}")
    if optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule {optim.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if optim.warmup_steps < 0 or not 0 <= optim.min_lr_ratio <= 1:
        raise ConfigError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")
    for name in ("max_steps", "batch_size", "grad_accum"):
        if getattr(train, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1, got {getattr(train, name)}")
    if train.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device {train.device!r} is not one of auto, cpu, cuda")
    if train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision {train.precision!r} is not one of auto, fp32, bf16")
    if train.distributed not in ("ddp", "fsdp"):
        raise ConfigError(f"train.distributed {train.distributed!r} is not one of ddp, fsdp")


# ============================================================================================
# distributed
# ============================================================================================


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", threads: int | None = None) -> DistInfo:
    """Read torchrun's environment; start the process group (nccl on CUDA, gloo on CPU).

    Without ``WORLD_SIZE`` (or with 1) this is a single process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if threads:
        torch.set_num_threads(threads)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return DistInfo(0, 0, 1, dev, None)
    backend = "nccl" if use_cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistInfo(rank, local_rank, world, dev, backend)


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.distributed:
        torch.distributed.barrier()


def all_reduce_mean(value: float, dist: DistInfo) -> float:
    """The mean of a number over ranks (for logging)."""
    if not dist.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / dist.world_size


def wrap_model(module: nn.Module, dist: DistInfo, how: str) -> nn.Module:
    """DDP (default) or FSDP2 ``fully_shard`` (each block of every ModuleList, then the root)
    when running in several processes; the module itself otherwise."""
    if not dist.distributed:
        return module
    if how == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in list(module.modules()):
            if isinstance(sub, nn.ModuleList) and len(sub) > 1:
                for block in sub:
                    fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(
        module, torch.nn.parallel.DistributedDataParallel) else module


def full_state_dict(module: nn.Module, dist: DistInfo, how: str) -> dict[str, torch.Tensor]:
    """The complete state dict on CPU (gathered from the shards under FSDP; every rank must call)."""
    if dist.distributed and how == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo,
                    how: str) -> dict[str, Any]:
    if dist.distributed and how == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any], dist: DistInfo, how: str) -> None:
    if dist.distributed and how == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=False))
        return
    optimizer.load_state_dict(state)


# ============================================================================================
# models
# ============================================================================================


def build_model(cfg: ModelConfig, *, pretraining: bool = False) -> tuple[nn.Module, Path | None]:
    """The encoder a config asks for -> (model, tokenizer.json path or None).

    ``init_from`` loads a checkpoint folder (ours or a released ModularStarEncoder); otherwise
    ``family`` picks ``mose-starcoder2`` (``preset`` + ``overrides`` of MoSEConfig fields) or
    ``hf-adapter`` (``base`` short name or local folder; ``overrides`` go to the adapter).
    MoSE models get their shared pretraining heads exactly when ``pretraining`` is set (heads
    of a pretrained checkpoint are dropped for fine-tuning, and added fresh for pretraining).
    """
    tokenizer: Path | None = None
    if cfg.init_from:
        from ..checkpoint import load_checkpoint

        model, tokenizer = load_checkpoint(cfg.init_from)
        if cfg.exits and tuple(cfg.exits) != tuple(model.exit_layers):
            raise ConfigError(f"model.exits {cfg.exits} differ from the exits of "
                              f"{cfg.init_from} ({list(model.exit_layers)}); leave model.exits "
                              f"unset to keep them")
    elif cfg.family == "mose-starcoder2":
        from ..model import MoSEEncoder, preset

        overrides = dict(cfg.overrides)
        if cfg.exits:
            overrides["exit_layers"] = tuple(cfg.exits)
        overrides["with_pretraining_heads"] = pretraining
        try:
            model = MoSEEncoder(preset(cfg.preset or "tiny", **overrides))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model: {err}") from err
    elif cfg.family == "hf-adapter":
        from ..hf_adapter import BASE_MODELS, HFMultiExitEncoder

        if pretraining:
            raise ConfigError("pretraining needs the mose-starcoder2 family (the hf-adapter has no "
                              "MLM/ICC heads); fine-tune it instead")
        base = cfg.base or "all-minilm-l6-v2"
        kwargs = dict(cfg.overrides)
        if cfg.exits:
            kwargs["exit_layers"] = tuple(cfg.exits)
        kwargs["projection"] = cfg.projection
        try:
            if base.lower() in BASE_MODELS:
                model = HFMultiExitEncoder.from_base_model(base, **kwargs)
            else:
                model = HFMultiExitEncoder.from_pretrained(base, **kwargs)
        except TypeError as err:
            raise ConfigError(f"model.overrides: {err}") from err
        tokenizer = model.tokenizer_file
    else:
        raise ConfigError(f"model.family {cfg.family!r} is not one of mose-starcoder2, hf-adapter")
    if getattr(model, "kind", None) == "mose-starcoder2":
        model = _set_pretraining_heads(model, pretraining)
    if cfg.tokenizer:
        tokenizer = Path(cfg.tokenizer).expanduser()
        if not tokenizer.is_file():
            raise ConfigError(f"model.tokenizer {tokenizer} does not exist")
    freeze_parameters(model, cfg.freeze)
    return model, tokenizer


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> int:
    """Stop training the parameters whose names start with one of ``prefixes`` (a prefix
    matches whole name components: "layer.1" is not "layer.10"); returns how many were
    frozen. A prefix that names no parameter is a configuration error."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        stem = prefix.rstrip(".")
        hits = [n for n in names if n == stem or n.startswith(stem + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"model.freeze: {prefix!r} names no parameter of the model; "
                              f"its parameters start with {', '.join(tops)}")
        for name, param in model.named_parameters():
            if name in hits and param.requires_grad:
                param.requires_grad_(False)
                frozen += 1
    if prefixes:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model.freeze: %d tensors frozen, %d parameters train", frozen, trainable)
    return frozen


def _set_pretraining_heads(model: nn.Module, wanted: bool) -> nn.Module:
    """A MoSE encoder with (fresh) or without its pretraining heads, other weights kept."""
    if bool(model.config.with_pretraining_heads) == wanted:
        return model
    from ..model import MoSEEncoder

    rebuilt = MoSEEncoder(dataclasses.replace(model.config, with_pretraining_heads=wanted))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.")}
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("heads.") for k in missing), (missing, unexpected)
    return rebuilt


# ============================================================================================
# precision, gradient checkpointing
# ============================================================================================


def autocast(dist: DistInfo, precision: str):
    """bf16 autocast on CUDA under ``auto``; explicit ``bf16`` also on CPU; else a no-op."""
    dtype = None
    if precision == "bf16" or (precision == "auto" and dist.device.type == "cuda"):
        dtype = torch.bfloat16
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dist.device.type, dtype=dtype)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Ask the model (MoSE: ``set_gradient_checkpointing``; hf-adapter: its transformers
    backbone's ``activation_checkpointing_enable``, ``gradient_checkpointing_enable`` before
    transformers 5) to recompute activations in backward."""
    if hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
        return
    for target in (model, getattr(model, "backbone", None)):
        method = getattr(target, "activation_checkpointing_enable", None)
        if method is not None:
            method(activation_checkpointing_kwargs={"use_reentrant": False})
            return
        method = getattr(target, "gradient_checkpointing_enable", None)
        if method is not None:
            method(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise ConfigError(f"train.gradient_checkpointing is set but {type(model).__name__} offers no "
                      f"way to enable it")


# ============================================================================================
# optimiser and schedule
# ============================================================================================

SCHEDULES = ("constant", "linear", "cosine", "step")


def lr_factor(step: int, *, schedule: str, warmup_steps: int, max_steps: int,
              min_lr_ratio: float = 0.0, milestones: Sequence[float] = (0.8, 0.9),
              gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from 1/warmup to 1 over ``warmup_steps``, then ``schedule`` from 1 down to
    ``min_lr_ratio`` at ``max_steps`` (``step``: multiply by ``gamma`` at each milestone, given
    as fractions of ``max_steps``, never below ``min_lr_ratio``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        passed = sum(step >= m * max_steps for m in milestones)
        return max(gamma ** passed, min_lr_ratio)
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}: expected one of {SCHEDULES}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for weight matrices; none for biases, norm weights (all tensors
    with fewer than 2 dims) and embedding tables (``nn.Embedding`` weights), the usual GPT/BERT
    practice. Frozen parameters are left out."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.dim() < 2 or id(p) in embedding_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device,
                    sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (fused kernel on CUDA unless parameters are FSDP shards)."""
    fused = device.type == "cuda" and not sharded
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    def factor(step: int) -> float:
        return lr_factor(step, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                         max_steps=max_steps, min_lr_ratio=cfg.min_lr_ratio,
                         milestones=cfg.step_milestones, gamma=cfg.step_gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ============================================================================================
# data order
# ============================================================================================


class ShardedBatches:
    """Resumable, rank-sharded batches of example indices.

    Each epoch shuffles ``range(n)`` with a generator seeded by ``(seed, epoch)`` and cuts it
    into global batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th slice of
    each, so one process with ``batch_size * W`` sees exactly what ``W`` ranks see together.
    The incomplete tail of an epoch is dropped. ``state_dict()`` is the position (epoch, batch).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), bool(shuffle)
        self.per_epoch = self.n // (self.batch_size * self.world_size)
        if self.per_epoch < 1:
            raise ConfigError(f"{n} examples cannot fill one global batch of "
                              f"{self.batch_size} x {self.world_size} ranks; lower "
                              f"train.batch_size or add data")
        self.epoch, self.index = 0, 0
        self.position = (0, 0)  # (epoch, batch) of the batch returned last
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self.index >= self.per_epoch:
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        global_bs = self.batch_size * self.world_size
        start = self.index * global_bs + self.rank * self.batch_size
        self.position = (self.epoch, self.index)
        self.index += 1
        return self._order[start:start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state.get("n", self.n)) != self.n:
            raise ConfigError(f"the checkpoint's data had {state['n']} examples, this run has "
                              f"{self.n}: resume with the same data")
        self.epoch, self.index, self._order = int(state["epoch"]), int(state["index"]), None


# ============================================================================================
# RNG states (stored as tensors and primitives so that weights_only loading works)
# ============================================================================================


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (collective under torch.distributed)."""
    mine = rng_state()
    if not dist.distributed:
        return [mine]
    everyone: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(everyone, mine)
    return everyone


# ============================================================================================
# checkpoints
# ============================================================================================


class _StateView:
    """What ``save_checkpoint`` reads from a model (kind, config, state dict), with a state
    dict gathered beforehand (FSDP shards, or a DDP-wrapped module)."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.kind = model.kind
        self._model, self._state = model, state

    def config_dict(self) -> dict[str, Any]:
        return self._model.config_dict()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:07d}"


def save_model(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
               tokenizer_file: str | Path | None, extra: dict[str, Any] | None = None) -> Path:
    """Write the encoder through training/checkpoint.py (the folder any family loads from)."""
    return save_checkpoint(_StateView(model, state), path, tokenizer_file=tokenizer_file,
                           extra=extra)


def save_trainer_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path / (TRAINER_STATE + ".tmp")
    torch.save({"format_version": STATE_VERSION, **state}, tmp)
    os.replace(tmp, path / TRAINER_STATE)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise ConfigError(f"{path} is not a resumable checkpoint (no {TRAINER_STATE})")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if state.get("format_version") != STATE_VERSION:
        raise ConfigError(f"{file} has format_version {state.get('format_version')!r}, "
                          f"expected {STATE_VERSION}")
    return state


def resolve_resume(path: str | Path) -> Path:
    """A step checkpoint folder, or a run's output folder (then its newest step checkpoint)."""
    root = Path(path).expanduser()
    if (root / TRAINER_STATE).is_file():
        return root
    steps = sorted((root / CHECKPOINTS).glob("step-*")) if (root / CHECKPOINTS).is_dir() else []
    steps = [s for s in steps if (s / TRAINER_STATE).is_file()]
    if not steps:
        raise ConfigError(f"nothing to resume in {root}: neither {TRAINER_STATE} nor "
                          f"{CHECKPOINTS}/step-*/{TRAINER_STATE}")
    return steps[-1]


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    folder = Path(output_dir) / CHECKPOINTS
    steps = sorted(folder.glob("step-*"))
    for old in steps[:-keep]:
        for f in sorted(old.iterdir()):
            f.unlink()
        old.rmdir()


def write_config(path: Path, config: Any) -> None:
    (path / RECIPE_CONFIG).write_text(
        yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


# ============================================================================================
# logging
# ============================================================================================


class MetricsLog:
    """Rank-0 metrics: one JSON object a line in ``<output_dir>/metrics.jsonl`` plus a log line."""

    def __init__(self, output_dir: str | Path, enabled: bool, resume: bool = False):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS
        self.records: list[dict[str, Any]] = []  # every record of this process (all ranks)
        self._start = time.perf_counter()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume and self.path.exists():
                self.path.unlink()

    def write(self, record: dict[str, Any], echo: bool = True) -> None:
        record = {**record, "elapsed_s": round(time.perf_counter() - self._start, 3)}
        self.records.append(record)
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if echo:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in record.items())
            log.info(shown)


def setup_logging(dist: DistInfo) -> None:
    if dist.is_main and not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


# ============================================================================================
# the pieces of a recipe's loop that both recipes share
# ============================================================================================


def optimizer_step(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                   max_grad_norm: float | None) -> tuple[float, float]:
    """Clip, step, advance the schedule, clear gradients -> (lr used, grad norm before clip)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm)) if max_grad_norm
                 else float("nan"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr, grad_norm


def save_run_checkpoint(*, name: str, config: Any, dist: DistInfo, module: nn.Module,
                        encoder: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        batches: ShardedBatches, step: int, tokenizer_path: Path | None,
                        final: bool) -> Path:
    """A resumable step checkpoint, or (``final``) the model alone in ``<output_dir>/final``.

    Every rank must call it (gathering state is collective); rank 0 writes. ``module`` is the
    (possibly wrapped) training module whose ``encoder`` attribute is ``encoder``.
    """
    how = config.train.distributed
    path = Path(config.output_dir) / FINAL if final else step_dir(config.output_dir, step)
    state = full_state_dict(module, dist, how)
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    optim = None if final else optimizer_state(module, optimizer, dist, how)
    rngs = None if final else gather_rng_states(dist)
    if dist.is_main:
        save_model(encoder, state, path, tokenizer_path, extra={"recipe": name, "step": step})
        write_config(path, config)
        if not final:
            save_trainer_state(path, {
                "recipe": name, "step": step, "optimizer": optim,
                "scheduler": scheduler.state_dict(), "data": batches.state_dict(),
                "rng": rngs, "world_size": dist.world_size})
            prune_checkpoints(config.output_dir, config.train.keep_checkpoints)
        log.info("saved %s", path)
    barrier(dist)
    return path


def restore_run_state(path: str | Path, *, name: str, config: Any, dist: DistInfo,
                      module: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                      batches: ShardedBatches) -> int:
    """Load a step checkpoint's optimiser, schedule, data position and this rank's RNG state
    (the weights are loaded by the recipe's setup); returns the step."""
    state = load_trainer_state(path)
    if state.get("recipe") != name:
        raise ConfigError(f"{path} is a {state.get('recipe')!r} checkpoint, not {name}")
    load_optimizer_state(module, optimizer, state["optimizer"], dist, config.train.distributed)
    scheduler.load_state_dict(state["scheduler"])
    batches.load_state_dict(state["data"])
    step = int(state["step"])
    rngs = state["rng"]
    if len(rngs) == dist.world_size:
        set_rng_state(rngs[dist.rank])
    else:
        log.warning("checkpoint from %d ranks resumed on %d: RNG states reseeded",
                    len(rngs), dist.world_size)
        seed_everything(config.seed + 7919 * step + dist.rank)
    return step


class Recipe:
    """What the pretraining and fine-tuning recipes share: checkpoints, resume, shutdown.

    Subclasses set ``name``, ``config``, ``dist``, ``module``, ``encoder``, ``optimizer``,
    ``scheduler``, ``batches``, ``step`` and ``tokenizer_path`` in ``setup`` and implement
    ``setup(resume_from)`` and ``train()``.
    """

    def save_checkpoint(self, final: bool = False) -> Path:
        """Step checkpoint (resumable) or the final model; every rank must call it."""
        return save_run_checkpoint(
            name=self.name, config=self.config, dist=self.dist, module=self.module,
            encoder=self.encoder, optimizer=self.optimizer, scheduler=self.scheduler,
            batches=self.batches, step=self.step, tokenizer_path=self.tokenizer_path,
            final=final)

    def resume(self, path: str | Path) -> None:
        """Restore optimiser, schedule, step, data position and RNG states (the weights were
        loaded in setup from the same folder)."""
        self.step = restore_run_state(
            path, name=self.name, config=self.config, dist=self.dist, module=self.module,
            optimizer=self.optimizer, scheduler=self.scheduler, batches=self.batches)

    def close(self) -> None:
        shutdown_distributed()


def run_recipe(recipe, resume_from: str | Path | None = None):
    """Set up, train and shut down ``recipe`` (a :class:`Recipe`); returns it."""
    recipe = recipe.setup(resume_from)
    try:
        recipe.train()
    finally:
        recipe.close()
    return recipe

"""Checkpoints on disk: a folder that any multi-exit encoder family can be saved to and loaded from.

Layout::

    mose_checkpoint.json   {"kind": <family>, "config": {...}, "format_version": 1, ...}
    model.safetensors      the state dict (no pickle)
    tokenizer.json         the tokenizer the model was trained with

A folder holding a released ModularStarEncoder checkpoint (HF layout: ``config.json`` +
``model.safetensors``/``pytorch_model.bin``) is recognised too and converted on load.

Each family (a ``MultiExitEncoder`` subclass) provides ``kind`` (a class attribute),
``config_dict()`` and ``from_config_dict(cls, data)``; it registers itself with
``register_family``. Recipe checkpoints with optimiser state use the same folder plus
``trainer_state.pt`` (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import json
import shutil
from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import CheckpointError

CHECKPOINT_FILE = "mose_checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

# kind -> "module:Class" (imported lazily so that families only load when used)
FAMILIES: dict[str, str] = {
    "mose-starcoder2": "mose_training.model:MoSEEncoder",
    "hf-adapter": "mose_training.hf_adapter:HFMultiExitEncoder",
}


def register_family(kind: str, target: str) -> None:
    FAMILIES[kind] = target


def _family(kind: str):
    if kind not in FAMILIES:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; known: {', '.join(FAMILIES)}")
    module, _, name = FAMILIES[kind].partition(":")
    return getattr(import_module(module), name)


def model_from_config(kind: str, config: dict[str, Any]):
    """A new, freshly initialised model of family ``kind`` with ``config`` (load a state dict
    into it next)."""
    return _family(kind).from_config_dict(config)


def save_checkpoint(model, path: str | Path, tokenizer_file: str | Path | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a MultiExitEncoder) and its tokenizer to ``path``."""
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"kind": model.kind, "format_version": FORMAT_VERSION,
            "config": model.config_dict(), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(root / WEIGHTS_FILE))
    if tokenizer_file is not None and Path(tokenizer_file).resolve() != (root / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer_file, root / TOKENIZER_FILE)
    (root / CHECKPOINT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root


def load_checkpoint(path: str | Path, map_location: str = "cpu"):
    """Load a checkpoint folder (ours, or a released ModularStarEncoder one) -> (model, tokenizer path).

    The tokenizer path is None when the folder has no tokenizer.json.
    """
    from safetensors.torch import load_file

    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    tokenizer = root / TOKENIZER_FILE
    tokenizer_path = tokenizer if tokenizer.is_file() else None
    meta_path = root / CHECKPOINT_FILE
    if not meta_path.is_file():
        if (root / "config.json").is_file():
            from .released import load_released  # HF-layout ModularStarEncoder folder

            return load_released(root, map_location=map_location), tokenizer_path
        raise CheckpointError(f"{root} holds neither {CHECKPOINT_FILE} (a mose checkpoint) nor "
                              f"config.json (a released ModularStarEncoder checkpoint)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind, config = meta["kind"], meta["config"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{meta_path} is malformed: {err}") from err
    model = model_from_config(kind, config)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{root} has no {WEIGHTS_FILE}")
    state = load_file(str(weights), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit a {kind} model with this config: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model, tokenizer_path

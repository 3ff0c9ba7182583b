"""Writing a model in the released ModularStarEncoder layout (config.json + safetensors), so
that tests can load one the way ``load_released`` reads a downloaded folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from mose_training.model import MoSEConfig, MoSEEncoder
from mose_training.released import (
    CONFIG_FIELDS,
    CONFIG_FILE,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
)


def released_config_json(config: MoSEConfig) -> dict[str, Any]:
    """config.json in the released field names for a MoSE config."""
    ours_to_theirs = {ours: theirs for theirs, ours in CONFIG_FIELDS.items()}
    data: dict[str, Any] = {"architectures": ["ModularStarEncoder"],
                            "model_type": "ModularStarEncoder"}
    for name, value in config.to_dict().items():
        if name in ours_to_theirs:
            data[ours_to_theirs[name]] = list(value) if isinstance(value, (list, tuple)) else value
    data.update(layer_norm_eps=config.layer_norm_eps, layer_matryoshka_loss=True,
                mlp_type="default", norm_type="layer_norm", sliding_window=None,
                bos_token_id=0, eos_token_id=0, use_cache=False, torch_dtype="float32")
    return data


def write_released_layout(model: MoSEEncoder, folder: str | Path, backbone_prefix: str = "model.",
                          heads_prefix: str = "", shards: int = 1) -> Path:
    """Write ``model`` as a released-layout folder: config.json + safetensors (``shards`` > 1
    writes ``model.safetensors.index.json`` and that many files).

    The backbone goes under ``backbone_prefix``; the projection heads and pretraining heads
    (as ``projection_heads.*`` and ``heads.*``) under ``heads_prefix``.
    """
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(("projection_heads.", "heads.")):
            name = heads_prefix + key
        else:
            name = backbone_prefix + key
        state[name] = tensor.detach().contiguous().cpu().clone()
    (root / CONFIG_FILE).write_text(json.dumps(released_config_json(model.config), indent=2) + "\n",
                                    encoding="utf-8")
    if shards <= 1:
        save_file(state, str(root / SAFETENSORS_FILE))
        return root
    keys = sorted(state)
    weight_map: dict[str, str] = {}
    for index in range(shards):
        part = keys[index::shards]
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(root / name))
        weight_map.update({k: name for k in part})
    (root / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                     indent=2) + "\n", encoding="utf-8")
    return root

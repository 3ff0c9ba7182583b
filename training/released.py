"""Load (and, for tests, write) checkpoints in the layout of the released ModularStarEncoder models.

The released models on the Hugging Face hub, ``modularStarEncoder/ModularStarEncoder``
(pretrained) and ``modularStarEncoder/ModularStarEncoder-finetuned``, are folders with a
``config.json`` (a ``ModularStarEncoderConfig``: StarCoder2 field names plus
``matryoshka_layers``, ``conditional_size``, ``layer_matryoshka_loss``) and a state dict in
``model.safetensors`` whose backbone is an HF ``Starcoder2Model``:

    <prefix>embed_tokens.weight
    <prefix>layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias}
    <prefix>layers.{i}.mlp.{c_fc,c_proj}.{weight,bias}
    <prefix>layers.{i}.{input_layernorm,post_attention_layernorm}.{weight,bias}
    <prefix>norm.{weight,bias}

plus, in the pretrained model, the shared pretraining heads (``StarEncoder2PreTrainingHeads``)
``...predictions.transform.{dense,LayerNorm}.*``, ``...predictions.decoder.weight``,
``...predictions.bias``, ``...seq_relationship.*``, ``...conditional_embeddings.weight``, and in
the fine-tuned model one projection head per exit, ``...projection_heads.{k}.{weight,bias}``.

The module prefixes of the release (e.g. ``model.``, a wrapper such as ``starEncoder2.``) could
not be confirmed from its code, so keys are matched by their *suffix*: the backbone prefix is
whatever precedes the one ``embed_tokens.weight`` key, and the heads are found by their names.
Anything that matches nothing is reported (``strict=True``), as is anything missing, with the
key names, so a layout that differs from this description fails loudly instead of loading
half a model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .model import (
    CODE_TEMPLATE,
    PLAIN_TEMPLATE,
    TEXT_TEMPLATE,
    MoSEConfig,
    MoSEEncoder,
)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

PRETRAINED_REPO = "modularStarEncoder/ModularStarEncoder"
FINETUNED_REPO = "modularStarEncoder/ModularStarEncoder-finetuned"
RELEASED_LICENSE = "bigcode-openrail-m"
RELEASED_ATTRIBUTION = ("ModularStarEncoder (MoSE) by Andrea Gurioli, Federico Pennino, "
                        "Joao Monteiro and Maurizio Gabbrielli (arXiv 2503.03008), "
                        "BigCode OpenRAIL-M v1")

# released config.json field -> MoSEConfig field (same meaning, maybe another name)
CONFIG_FIELDS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "norm_epsilon": "layer_norm_eps",  # what Starcoder2's LayerNorms use
    "use_bias": "use_bias",
    "attention_dropout": "attention_dropout",
    "residual_dropout": "residual_dropout",
    "embedding_dropout": "embedding_dropout",
    "initializer_range": "initializer_range",
    "matryoshka_layers": "exit_layers",
    "conditional_size": "conditional_size",
}

_BACKBONE = re.compile(r"embed_tokens\.weight|norm\.(weight|bias)|layers\.\d+\.\S+")
_PROJECTION = re.compile(r"(?:^|.*\.)(projection_heads\.\d+\.(?:weight|bias))")
_HEADS = re.compile(r"(?:^|.*\.)((?:predictions\.\S+)|(?:seq_relationship\.(?:weight|bias))"
                    r"|(?:conditional_embeddings\.weight))")
_IGNORED = re.compile(r"(?:^|.*\.)rotary_emb\.inv_freq")  # a non-persistent buffer in newer HF


class ReleasedCheckpointError(CheckpointError):
    """A released-layout folder is missing files, or its weights do not fit its config."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_released_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReleasedCheckpointError(f"cannot read {path}: {err}") from err


def config_from_released(data: dict[str, Any]) -> dict[str, Any]:
    """The MoSEConfig fields a released config.json determines (heads are read from weights)."""
    out: dict[str, Any] = {}
    for theirs, ours in CONFIG_FIELDS.items():
        if theirs in data and data[theirs] is not None:
            out[ours] = data[theirs]
    if "rope_theta" not in out and isinstance(data.get("rope_parameters"), dict):
        out["rope_theta"] = data["rope_parameters"].get("rope_theta")  # transformers 5 layout
    if "layer_norm_eps" not in out and data.get("layer_norm_eps") is not None:
        out["layer_norm_eps"] = data["layer_norm_eps"]
    if "exit_layers" in out:
        out["exit_layers"] = tuple(out["exit_layers"])
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size", "exit_layers") if k not in out]
    if missing:
        raise ReleasedCheckpointError(
            f"config.json lacks {missing}: not a ModularStarEncoder config")
    problems = []
    if data.get("mlp_type", "default") != "default":
        problems.append(f"mlp_type {data['mlp_type']!r} (only 'default' is supported)")
    if data.get("norm_type", "layer_norm") != "layer_norm":
        problems.append(f"norm_type {data['norm_type']!r} (only 'layer_norm' is supported)")
    window = data.get("sliding_window")
    if window is not None and window < out.get("max_position_embeddings", 2048):
        problems.append(f"sliding_window {window} (the encoder attends over the whole input)")
    if problems:
        raise ReleasedCheckpointError("config.json describes another architecture: "
                                      + "; ".join(problems))
    return out


def read_released_state(folder: str | Path, map_location: str | torch.device = "cpu"
                        ) -> dict[str, torch.Tensor]:
    """The state dict of a released folder: safetensors (single or sharded), else a torch .bin."""
    from safetensors.torch import load_file

    root = Path(folder)
    if (root / SAFETENSORS_FILE).is_file():
        return load_file(str(root / SAFETENSORS_FILE), device=str(map_location))
    if (root / SAFETENSORS_INDEX).is_file():
        return _read_sharded(root, SAFETENSORS_INDEX,
                             lambda p: load_file(str(p), device=str(map_location)))
    if (root / TORCH_FILE).is_file():
        return torch.load(root / TORCH_FILE, map_location=map_location, weights_only=True)
    if (root / TORCH_INDEX).is_file():
        return _read_sharded(root, TORCH_INDEX, lambda p: torch.load(
            p, map_location=map_location, weights_only=True))
    raise ReleasedCheckpointError(
        f"{root} has no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{TORCH_FILE} or {TORCH_INDEX}")


def _read_sharded(root: Path, index_name: str, load) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads((root / index_name).read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as err:
        raise ReleasedCheckpointError(f"{root / index_name} is malformed: {err}") from err
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (root / shard).is_file():
            raise ReleasedCheckpointError(
                f"{root / index_name} names shard {shard}, which is missing")
        state.update(load(root / shard))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise ReleasedCheckpointError(
            f"shards of {root} lack keys listed in {index_name}: {absent[:10]}")
    return state


def map_released_keys(state: dict[str, torch.Tensor], strict: bool = True
                      ) -> dict[str, torch.Tensor]:
    """Released key names -> MoSEEncoder state-dict names (see the module docstring)."""
    anchors = [k for k in state if k == "embed_tokens.weight" or k.endswith(".embed_tokens.weight")]
    if len(anchors) != 1:
        raise ReleasedCheckpointError(
            f"expected exactly one '*embed_tokens.weight' key to locate the backbone, found "
            f"{anchors or 'none'}; keys start with {sorted(state)[:8]}")
    prefix = anchors[0][: -len("embed_tokens.weight")]
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        ours = None
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest is not None and _BACKBONE.fullmatch(rest):
            ours = rest
        elif m := _PROJECTION.fullmatch(key):
            ours = m.group(1)
        elif m := _HEADS.fullmatch(key):
            ours = "heads." + m.group(1)
        elif _IGNORED.fullmatch(key):
            continue
        if ours is None:
            unmapped.append(key)
        elif ours in mapped:
            raise ReleasedCheckpointError(
                f"two released keys map to {ours!r} (one of them: {key!r})")
        else:
            mapped[ours] = tensor
    # A BERT-style decoder.bias is the same tensor as predictions.bias (tied): keep one.
    tied = mapped.pop("heads.predictions.decoder.bias", None)
    if tied is not None and "heads.predictions.bias" not in mapped:
        mapped["heads.predictions.bias"] = tied
    if unmapped and strict:
        raise ReleasedCheckpointError(
            f"{len(unmapped)} released keys match no part of the MoSE model: "
            f"{sorted(unmapped)[:20]}"
            " (pass strict=False to ignore them)")
    return mapped


def _config_from_weights(base: dict[str, Any], mapped: dict[str, torch.Tensor]) -> MoSEConfig:
    """Complete the config with what only the weights tell: projection heads, pretraining heads."""
    exits = base["exit_layers"]
    heads = sorted({int(k.split(".")[1]) for k in mapped if k.startswith("projection_heads.")})
    if heads and heads != list(range(len(exits))):
        raise ReleasedCheckpointError(
            f"projection heads {heads} do not match the {len(exits)} exits {list(exits)}")
    projection_dim = mapped["projection_heads.0.weight"].shape[0] if heads else None
    pretrained = any(k.startswith("heads.") for k in mapped)
    layers = {int(k.split(".")[1]) for k in mapped if k.startswith("layers.")}
    if layers and max(layers) + 1 != base["num_hidden_layers"]:
        raise ReleasedCheckpointError(
            f"the weights hold {max(layers) + 1} blocks but config.json says num_hidden_layers="
            f"{base['num_hidden_layers']} (truncated releases are not supported)")
    finetuned = projection_dim is not None
    return MoSEConfig(
        **base, projection_dim=projection_dim, with_pretraining_heads=pretrained,
        pooling="last", norm_intermediate_exits=False,
        name="modularstarencoder-1b" + ("-finetuned" if finetuned else ""),
        base_model=FINETUNED_REPO if finetuned else PRETRAINED_REPO,
        license=RELEASED_LICENSE, attribution=RELEASED_ATTRIBUTION,
        text_template=TEXT_TEMPLATE if finetuned else PLAIN_TEMPLATE,
        code_template=CODE_TEMPLATE if finetuned else PLAIN_TEMPLATE)


def load_released(folder: str | Path, map_location: str | torch.device = "cpu",
                  strict: bool = True) -> MoSEEncoder:
    """A released (HF-layout) ModularStarEncoder folder -> ``MoSEEncoder`` in eval mode.

    Weights are copied into float32 parameters. Raises ``ReleasedCheckpointError`` naming the
    keys that are missing, unexpected (``strict``) or of the wrong shape.
    """
    root = Path(folder).expanduser()
    if not (root / CONFIG_FILE).is_file():
        raise ReleasedCheckpointError(f"{root} has no {CONFIG_FILE}")
    base = config_from_released(read_released_config(root))
    mapped = map_released_keys(read_released_state(root, map_location), strict=strict)
    config = _config_from_weights(base, mapped)
    model = MoSEEncoder(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong = sorted(f"{k}: {tuple(mapped[k].shape)} != {tuple(expected[k].shape)}"
                   for k in set(expected) & set(mapped) if mapped[k].shape != expected[k].shape)
    if missing or wrong or (unexpected and strict):
        parts = [f"missing {missing[:20]}" if missing else "",
                 f"unexpected {unexpected[:20]}" if unexpected else "",
                 f"wrong shapes {wrong[:20]}" if wrong else ""]
        raise ReleasedCheckpointError(
            f"the weights in {root} do not fit its config.json: "
            + "; ".join(p for p in parts if p))
    model.load_state_dict({k: mapped[k] for k in expected}, strict=True)
    return model.to(map_location).eval()

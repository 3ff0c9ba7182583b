"""MoSE: the ModularStarEncoder architecture, in one file.

A StarCoder2-style transformer used as a *bidirectional* encoder (no causal mask, no sliding
window; only padding is masked), with exits on chosen layers. Each exit reads the residual
stream after its block, pools it (the final ``<cls>`` token by default), projects it with its
own linear head and L2-normalises it. Deployment cuts the model at any exit: ``exit_module(k)``
holds only the embeddings, blocks ``1..k`` and the head of exit ``k``.

Layout and names follow HF ``Starcoder2Model`` (``embed_tokens``, ``layers.{i}.self_attn.*``,
``layers.{i}.mlp.{c_fc,c_proj}``, ``layers.{i}.{input,post_attention}_layernorm``, ``norm``), so
the released checkpoints map onto it one to one (see ``released.py``).

Caveat kept from the release: HF Starcoder2 applies the final ``norm`` only after the last block,
so the deepest exit (layer == num_hidden_layers) reads normalised states while the earlier exits
read raw residual streams. ``norm_intermediate_exits`` changes that for models trained otherwise.

The graph is kept friendly to ``torch.onnx.export`` (legacy exporter, opset 17): no Python
branching on tensor values, positions and RoPE tables built with tensor ops, an additive
padding mask, grouped-query heads expanded with expand/reshape.

Shapes: B batch, T tokens, H hidden size, D projection size, V vocabulary, nh/nkv query/key-value
heads, hd head size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import ExportInfo, MultiExitEncoder, MultiExitOutput, l2_normalize, pool

TEXT_TEMPLATE = ("<sep>Represent this code description for retrieving supporting snippets of "
                 "code:<sep>{input}<cls>")
CODE_TEMPLATE = "<sep>Represent this {lang} code snippet for retrieval:<sep>{input}<cls>"
PLAIN_TEMPLATE = "<sep>{input}<cls>"  # pretraining input format (no instruction)

POOLINGS = ("last", "mean", "cls")
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclass
class MoSEConfig:
    """Everything that defines a MoSE encoder. Defaults are the released 1B model."""

    # -- transformer (names as in the released config.json / HF Starcoder2Config) --
    vocab_size: int = 49156  # StarCoder2 BPE (49152) + <sep>, <cls>, <mask> and one spare
    hidden_size: int = 1024  # H
    num_hidden_layers: int = 36  # blocks
    num_attention_heads: int = 16  # query heads; head_dim = hidden_size // num_attention_heads
    num_key_value_heads: int = 4  # grouped-query attention: each k/v head serves 4 query heads
    intermediate_size: int = 12288  # MLP width (c_fc -> act -> c_proj, not gated)
    hidden_act: str = "gelu_pytorch_tanh"  # "gelu_pytorch_tanh" (tanh approximation) or "gelu"
    max_position_embeddings: int = 2048  # longest input the model was trained on (tokens)
    rope_theta: float = 999999.4420358813  # RoPE base, exactly as in the released config (~1e6)
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (released: norm_epsilon)
    use_bias: bool = True  # biases on every linear layer of the blocks
    attention_dropout: float = 0.1  # dropout on attention probabilities (training only)
    residual_dropout: float = 0.1  # dropout on attention and MLP outputs before the residual add
    embedding_dropout: float = 0.1  # dropout on the token embeddings
    initializer_range: float = 0.018042  # std of the normal init of linear/embedding weights

    # -- exits --
    exit_layers: tuple[int, ...] = (4, 9, 18, 27, 36)  # 1-based blocks that carry an exit
    norm_intermediate_exits: bool = False  # False as released: only the last block's exit is normed
    projection_dim: int | None = 1024  # D of each exit's Linear(H, D) head; None: no heads (D = H)
    pooling: str = "last"  # "last" (final <cls>, right padding), "mean" or "cls" (first token)

    # -- pretraining heads (MLM + in-context classification), shared by all exits --
    with_pretraining_heads: bool = False  # build MoSEPretrainingHeads as ``self.heads``
    conditional_size: int = 4  # size of the learned exit embedding concatenated to the states

    # -- special tokens --
    pad_token_id: int = 0
    sep_token_id: int = 49152
    cls_token_id: int = 49153
    mask_token_id: int = 49154

    # -- training --
    gradient_checkpointing: bool = False  # recompute blocks in backward to save memory

    # -- provenance and input format (what the exporter writes into the model directory) --
    name: str = "mose"  # model name shown to users
    base_model: str = "none (trained from scratch)"  # what the weights come from
    license: str = "Apache-2.0"  # licence of the weights
    attribution: str = ("MoSE/ModularStarEncoder architecture: Gurioli, Pennino, Monteiro, "
                        "Gabbrielli, arXiv 2503.03008")
    text_template: str = TEXT_TEMPLATE  # natural-language query format ("{input}")
    code_template: str = CODE_TEMPLATE  # code format ("{lang}", "{input}")

    def __post_init__(self) -> None:
        self.exit_layers = tuple(int(e) for e in self.exit_layers)
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_attention_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {self.num_key_value_heads}")
        if not self.exit_layers:
            problems.append("exit_layers is empty")
        elif list(self.exit_layers) != sorted(set(self.exit_layers)):
            problems.append(f"exit_layers {self.exit_layers} must be strictly ascending")
        elif self.exit_layers[0] < 1 or self.exit_layers[-1] > self.num_hidden_layers:
            problems.append(f"exit_layers {self.exit_layers} must lie in "
                            f"1..{self.num_hidden_layers}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.projection_dim is not None and self.projection_dim < 1:
            problems.append(f"projection_dim {self.projection_dim} must be positive or None")
        if problems:
            raise ValueError("invalid MoSEConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_dim(self) -> int:
        """D: size of the vectors an exit returns."""
        return self.projection_dim if self.projection_dim is not None else self.hidden_size

    def normed_exit(self, layer: int) -> bool:
        """Whether the exit at ``layer`` reads the states after the final ``norm``."""
        return layer == self.num_hidden_layers or self.norm_intermediate_exits

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_layers"] = list(self.exit_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoSEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MoSEConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, MoSEConfig] = {
    # The released ModularStarEncoder-1B (config.json of modularStarEncoder/ModularStarEncoder).
    "mose-1b": MoSEConfig(name="mose-1b"),
    # Test-sized models: same architecture, dropout off so that tiny training runs are exact;
    # "tiny" has a 1024-token vocabulary with <sep>=1, <cls>=2, <mask>=3 (pad stays 0).
    "tiny": MoSEConfig(
        name="mose-tiny", vocab_size=1024, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        max_position_embeddings=128, exit_layers=(2, 4), projection_dim=32,
        attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
        sep_token_id=1, cls_token_id=2, mask_token_id=3),
    "small": MoSEConfig(
        name="mose-small", vocab_size=49156, hidden_size=256, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024,
        max_position_embeddings=1024, exit_layers=(2, 4, 6, 8), projection_dim=256,
        attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0),
}


def preset(name: str, **overrides: Any) -> MoSEConfig:
    """A named config (``mose-1b``, ``tiny``, ``small``), with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown MoSE preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def count_parameters(config: MoSEConfig, up_to_exit: int | None = None,
                     include_heads: bool = True) -> int:
    """Number of parameters, computed from the config alone (nothing is allocated).

    ``up_to_exit=None``: the whole ``MoSEEncoder`` (embeddings, every block, final norm, and with
    ``include_heads`` the projection heads and pretraining heads it builds).
    ``up_to_exit=k``: what ``exit_module(k)`` holds: embeddings, blocks 1..k, the final norm if
    exit ``k`` uses it, and with ``include_heads`` the projection head of exit ``k``.
    The paper's "parameters to each exit" (162M/301M/551M/801M/1.05B) are
    ``include_heads=False``: embeddings + blocks (+ final norm at the last layer).
    """
    c = config
    H, I, V = c.hidden_size, c.intermediate_size, c.vocab_size
    kv = c.num_key_value_heads * c.head_dim
    b = 1 if c.use_bias else 0
    attention = 2 * (H * H + b * H) + 2 * (H * kv + b * kv)  # q, o: H->H; k, v: H->kv
    mlp = (H * I + b * I) + (I * H + b * H)  # c_fc, c_proj
    block = attention + mlp + 2 * (2 * H)  # + two LayerNorms (weight and bias)
    embeddings = V * H
    norm = 2 * H
    projection = 0 if c.projection_dim is None else H * c.projection_dim + c.projection_dim

    if up_to_exit is None:
        total = embeddings + c.num_hidden_layers * block + norm
        if include_heads:
            total += len(c.exit_layers) * projection
            if c.with_pretraining_heads:
                total += count_pretraining_head_parameters(c)
        return total
    assert up_to_exit in c.exit_layers, f"{up_to_exit} is not an exit of {c.exit_layers}"
    total = embeddings + up_to_exit * block + (norm if c.normed_exit(up_to_exit) else 0)
    return total + (projection if include_heads else 0)


def count_pretraining_head_parameters(config: MoSEConfig) -> int:
    """Parameters of ``MoSEPretrainingHeads`` (exit embedding, MLM head, ICC head)."""
    H, C, V = config.hidden_size, config.conditional_size, config.vocab_size
    exit_embedding = len(config.exit_layers) * C
    transform = (H + C) * H + H + 2 * H  # dense + LayerNorm
    decoder = H * V + V  # weight + output bias
    icc = (H + C) * 2 + 2
    return exit_embedding + transform + decoder + icc


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) of 1 (token) / 0 (pad) -> (B, 1, 1, T): 0 where a key may be attended, else -inf-ish.

    Bidirectional: every query sees every real token; nothing else is masked.
    """
    keep = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - keep) * torch.finfo(dtype).min


class RotaryEmbedding(nn.Module):
    """RoPE tables (HF/GPT-NeoX convention: the two halves of each head are rotated together)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hd/2,)

    def forward(self, attention_mask: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) mask -> cos, sin of shape (B, T, hd). Positions are 0..T-1 (tensor ops only)."""
        positions = torch.cumsum(torch.ones_like(attention_mask, dtype=torch.float), dim=1) - 1
        freqs = positions[..., None] * self.inv_freq  # (B, T, hd/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hd), cos/sin (B, T, hd) -> rotated x, same shape."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
    return x * cos + _rotate_half(x) * sin


class MoSEAttention(nn.Module):
    """Bidirectional grouped-query self-attention with RoPE."""

    def __init__(self, config: MoSEConfig):
        super().__init__()
        H, hd = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd
        self.q_proj = nn.Linear(H, self.num_heads * hd, bias=config.use_bias)
        self.k_proj = nn.Linear(H, self.num_kv_heads * hd, bias=config.use_bias)
        self.v_proj = nn.Linear(H, self.num_kv_heads * hd, bias=config.use_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, H, bias=config.use_bias)
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def _expand_kv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, nkv, T, hd) -> (B, nh, T, hd): a k/v head serves nh/nkv consecutive query heads."""
        groups = self.num_heads // self.num_kv_heads
        if groups == 1:
            return x
        b, nkv, t, hd = x.shape
        return x[:, :, None].expand(b, nkv, groups, t, hd).reshape(b, nkv * groups, t, hd)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, H)
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(b, t, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = self._expand_kv(k), self._expand_kv(v)  # (B, nh, T, hd)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(self.head_dim))  # (B, nh, T, hd)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)  # (B, T, H)
        return self.residual_dropout(self.o_proj(out))


class MoSEMLP(nn.Module):
    """c_fc -> GELU (tanh approximation) -> c_proj; not gated."""

    def __init__(self, config: MoSEConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.approximate = "tanh" if config.hidden_act == "gelu_pytorch_tanh" else "none"
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        hidden = F.gelu(self.c_fc(x), approximate=self.approximate)  # (B, T, I)
        return self.residual_dropout(self.c_proj(hidden))


class MoSEBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: MoSEConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MoSEAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MoSEMLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        x = x + self.self_attn(self.input_layernorm(x), mask, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


# --------------------------------------------------------------------------------------------
# Pretraining heads
# --------------------------------------------------------------------------------------------

class MoSEHeadTransform(nn.Module):
    """dense (H + C -> H) -> GELU -> LayerNorm, before the MLM decoder."""

    def __init__(self, config: MoSEConfig):
        super().__init__()
        H, C = config.hidden_size, config.conditional_size
        self.dense = nn.Linear(H + C, H)
        self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)  # name as in BERT-style heads
        self.approximate = "tanh" if config.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H + C) -> (B, T, H)
        return self.LayerNorm(F.gelu(self.dense(x), approximate=self.approximate))


class MoSELMPrediction(nn.Module):
    """MLM head: transform, then a decoder to the vocabulary with its own output bias."""

    def __init__(self, config: MoSEConfig):
        super().__init__()
        self.transform = MoSEHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H + C) -> (B, T, V)
        return self.decoder(self.transform(x)) + self.bias


class MoSEPretrainingHeads(nn.Module):
    """MLM and in-context-classification (ICC, "same repository?") heads shared by all exits.

    Each exit is told apart by a learned ``conditional_size``-dim exit embedding that is
    concatenated to the hidden states before either head.
    """

    def __init__(self, config: MoSEConfig):
        super().__init__()
        self.conditional_embeddings = nn.Embedding(len(config.exit_layers), config.conditional_size)
        self.predictions = MoSELMPrediction(config)
        self.seq_relationship = nn.Linear(config.hidden_size + config.conditional_size, 2)

    def forward(self, hidden: torch.Tensor, pooled: torch.Tensor, exit_index: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, T, H), pooled (B, H), index of the exit in exit_layers
        -> MLM logits (B, T, V), ICC logits (B, 2)."""
        n_exits = self.conditional_embeddings.num_embeddings
        assert 0 <= exit_index < n_exits, f"exit index {exit_index} out of range for {n_exits} exits"
        cond = self.conditional_embeddings.weight[exit_index]  # (C,)
        b, t, _ = hidden.shape
        mlm = self.predictions(torch.cat([hidden, cond.expand(b, t, -1)], dim=-1))
        icc = self.seq_relationship(torch.cat([pooled, cond.expand(b, -1)], dim=-1))
        return mlm, icc


@dataclass
class MoSEPretrainingOutput:
    """Per exit (shallow to deep): the encoder's output and the pretraining heads' logits."""

    encoder: MultiExitOutput
    mlm_logits: tuple[torch.Tensor, ...]  # per exit (B, T, V)
    icc_logits: tuple[torch.Tensor, ...]  # per exit (B, 2)

    @property
    def exits(self) -> tuple[int, ...]:
        return self.encoder.exits


# --------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------

class MoSEEncoder(MultiExitEncoder):
    """Multi-exit MoSE encoder. ``forward`` returns every requested exit, shallow to deep."""

    kind = "mose-starcoder2"

    def __init__(self, config: MoSEConfig):
        super().__init__()
        self.config = config
        self.exit_layers = config.exit_layers
        self.gradient_checkpointing = config.gradient_checkpointing
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(MoSEBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection_heads = (
            nn.ModuleList(nn.Linear(config.hidden_size, config.projection_dim)
                          for _ in config.exit_layers)
            if config.projection_dim is not None else None)
        self.heads = MoSEPretrainingHeads(config) if config.with_pretraining_heads else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- family interface (checkpoint.py) --
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> MoSEEncoder:
        return cls(MoSEConfig.from_dict(data))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MoSEEncoder:
        return cls(preset(name, **overrides))

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block during backward (training only) instead of storing activations."""
        self.gradient_checkpointing = enabled

    # -- forward --
    def exit_states(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Output of block ``layer`` (B, T, H) -> the states its exit reads (normed or raw)."""
        return self.norm(hidden) if self.config.normed_exit(layer) else hidden

    def project(self, pooled: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, H) pooled states of exit ``layer`` -> (B, D) L2-normalised embedding."""
        if self.projection_heads is not None:
            pooled = self.projection_heads[self.exit_layers.index(layer)](pooled)
        return l2_normalize(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                exits: tuple[int, ...] | None = None) -> MultiExitOutput:
        """input_ids, attention_mask (B, T), right padded -> every requested exit.

        Blocks above the deepest requested exit are not run.
        """
        chosen = self._check_exits(exits)
        assert input_ids.shape == attention_mask.shape, (
            f"input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} differ")
        limit = self.config.max_position_embeddings
        assert input_ids.shape[1] <= limit, \
            f"{input_ids.shape[1]} tokens exceed max_position_embeddings {limit}"
        x = self.embedding_dropout(self.embed_tokens(input_ids))  # (B, T, H)
        mask = additive_padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        cos, sin = self.rotary(attention_mask, x.dtype)  # (B, T, hd)
        hidden: list[torch.Tensor] = []
        for index in range(chosen[-1]):
            block = self.layers[index]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, cos, sin, use_reentrant=False)
            else:
                x = block(x, mask, cos, sin)
            if index + 1 in chosen:
                hidden.append(self.exit_states(x, index + 1))  # (B, T, H)
        pooled = tuple(pool(h, attention_mask, self.config.pooling) for h in hidden)  # (B, H) each
        embeddings = tuple(self.project(p, layer) for p, layer in zip(pooled, chosen))  # (B, D)
        return MultiExitOutput(exits=chosen, hidden_states=tuple(hidden), pooled=pooled,
                               embeddings=embeddings)

    def pretraining_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            exits: tuple[int, ...] | None = None) -> MoSEPretrainingOutput:
        """The encoder's output plus MLM (B, T, V) and ICC (B, 2) logits for each requested exit.

        The ICC head reads the pooled token (the final ``<cls>`` with ``pooling="last"``).
        """
        assert self.heads is not None, \
            "this model has no pretraining heads (see with_pretraining_heads)"
        out = self.forward(input_ids, attention_mask, exits)
        logits = [self.heads(h, p, self.exit_layers.index(layer))
                  for h, p, layer in zip(out.hidden_states, out.pooled, out.exits)]
        return MoSEPretrainingOutput(encoder=out, mlm_logits=tuple(m for m, _ in logits),
                                     icc_logits=tuple(i for _, i in logits))

    # -- deployment --
    def exit_module(self, layer: int) -> MoSEExit:
        self._check_exits((layer,))
        return MoSEExit(self, layer)

    def export_info(self) -> ExportInfo:
        c = self.config
        return ExportInfo(
            name=c.name, base_model=c.base_model, license=c.license, attribution=c.attribution,
            num_layers=c.num_hidden_layers, pooling=c.pooling, max_tokens=c.max_position_embeddings,
            pad_id=c.pad_token_id, text_template=c.text_template, code_template=c.code_template,
            add_special_tokens=False,
            extra={"kind": self.kind, "exit_layers": list(c.exit_layers),
                   "embedding_dim": c.embedding_dim,
                   "norm_intermediate_exits": c.norm_intermediate_exits,
                   "special_tokens": {"sep": c.sep_token_id, "cls": c.cls_token_id,
                                      "mask": c.mask_token_id, "pad": c.pad_token_id}})


class MoSEExit(nn.Module):
    """One exit of a ``MoSEEncoder`` as a standalone module: the unit that is exported.

    It shares (does not copy) the encoder's embeddings, blocks ``1..layer``, the final norm if
    that exit uses it, and the exit's projection head; nothing above ``layer`` is referenced.
    """

    def __init__(self, encoder: MoSEEncoder, layer: int):
        super().__init__()
        config = encoder.config
        self.layer = layer
        self.pooling = config.pooling
        self.embed_tokens = encoder.embed_tokens
        self.rotary = encoder.rotary
        self.layers = nn.ModuleList(encoder.layers[:layer])
        self.norm = encoder.norm if config.normed_exit(layer) else nn.Identity()
        self.projection = (encoder.projection_heads[encoder.exit_layers.index(layer)]
                           if encoder.projection_heads is not None else nn.Identity())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T), right padded -> (B, D) L2-normalised embeddings."""
        x = self.embed_tokens(input_ids)  # (B, T, H)
        mask = additive_padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        cos, sin = self.rotary(attention_mask, x.dtype)  # (B, T, hd)
        for block in self.layers:
            x = block(x, mask, cos, sin)
        pooled = pool(self.norm(x), attention_mask, self.pooling)  # (B, H)
        return l2_normalize(self.projection(pooled))  # (B, D)

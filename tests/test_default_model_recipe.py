"""The default model's recipe (training/recipes/exit_heads.py): heads fitted on cached vectors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mose_training.recipes import exit_heads
from mose_training.recipes.exit_heads import HeadFitConfig, fit_heads


def _cache(n: int = 256, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic exit vectors: the deep exit matches queries to their code, the shallow exit sees
    the same signal plus a large per-text nuisance in a fixed subspace (a head can remove it)."""
    g = np.random.default_rng(seed)
    topic = g.normal(size=(n, dim))
    nuisance = g.normal(size=(4, dim))
    cache = {}
    for name in ("q_doc", "q_short", "code", "code_doc"):
        deep = topic + 0.3 * g.normal(size=(n, dim))
        shallow = deep + 3.0 * g.normal(size=(n, 4)) @ nuisance
        for e, x in ((2, shallow), (6, deep)):
            cache[f"{name}@{e}"] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return cache


def _mrr(q: np.ndarray, d: np.ndarray) -> float:
    ranks = (q @ d.T > np.sum(q * d, axis=1, keepdims=True)).sum(1) + 1
    return float(np.mean(1.0 / ranks))


def test_fitted_shallow_head_learns_and_losses_combine():
    cache = _cache()
    cfg = HeadFitConfig(exits=[2, 6], steps=150, batch_size=64, lr=1e-2, distill_kl=1.0,
                        anchor=0.5, embed_distill=0.5, identity_reg=1e-4)
    heads = fit_heads(cache, cfg, log=lambda *_: None)
    assert set(heads) == {2, 6} and heads[2].shape == (16, 16)

    def emb(name: str, e: int, w: torch.Tensor | None) -> np.ndarray:
        x = torch.from_numpy(cache[f"{name}@{e}"])
        return (F.normalize(x @ w.T, dim=-1) if w is not None else x).numpy()

    before = _mrr(emb("q_doc", 2, None), emb("code", 2, None))
    after = _mrr(emb("q_doc", 2, heads[2]), emb("code", 2, heads[2]))
    assert after > before + 0.05


def test_plain_config_is_deterministic_and_identity_start():
    cache = _cache(n=64)
    zero = fit_heads(cache, HeadFitConfig(steps=0), log=lambda *_: None)
    assert torch.equal(zero[6], torch.eye(16))
    a = fit_heads(cache, HeadFitConfig(steps=5, batch_size=32), log=lambda *_: None)
    b = fit_heads(cache, HeadFitConfig(steps=5, batch_size=32), log=lambda *_: None)
    assert torch.equal(a[2], b[2])


def test_build_checkpoint_puts_heads_on_the_base_model(tmp_path):
    from mose_training.checkpoint import load_checkpoint

    w2 = torch.eye(384) * 2
    w6 = torch.eye(384)
    w6[0, 1] = 0.5
    exit_heads.build_checkpoint({2: w2, 6: w6}, str(tmp_path / "ck"), metadata={"x": 1})
    model, tok = load_checkpoint(tmp_path / "ck")
    assert tok is not None and model.exit_layers == (2, 6)
    assert torch.equal(model.heads["6"].proj.weight, w6)
    assert float(model.heads["2"].proj.bias.abs().sum()) == 0.0


def test_retrieval_loss_takes_one_anchor_weight_per_exit():
    import pytest
    from mose_training.losses import EmbeddingAnchor, RetrievalLoss

    g = torch.Generator().manual_seed(0)
    q = [F.normalize(torch.randn(8, 4, generator=g), dim=-1) for _ in range(2)]
    d = [F.normalize(torch.randn(8, 4, generator=g), dim=-1) for _ in range(2)]
    tq, td = q[1].clone(), d[1].clone()
    same = RetrievalLoss((2, 6), anchor=EmbeddingAnchor(), anchor_weight=0.5)(q, d, tq, td)
    listed = RetrievalLoss((2, 6), anchor=EmbeddingAnchor(), anchor_weight=[0.5, 0.5])(q, d, tq, td)
    assert torch.allclose(same.total, listed.total)
    deep_off = RetrievalLoss((2, 6), anchor=EmbeddingAnchor(), anchor_weight=[0.5, 0.0])(q, d, tq, td)
    # the deepest exit equals the teacher here, so only the shallow exit's anchor counts
    assert torch.allclose(deep_off.total, same.total)
    with pytest.raises(ValueError):
        RetrievalLoss((2, 6), anchor=EmbeddingAnchor(), anchor_weight=[1.0])

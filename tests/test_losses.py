"""Losses on hand-checked examples."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mose_training.losses import (
    EmbeddingAnchor,
    InfoNCELoss,
    MultiExitLoss,
    PretrainingLoss,
    RetrievalLoss,
    SimilarityDistillation,
    embedding_anchor,
    exit_weights,
    icc_loss,
    info_nce,
    mlm_loss,
    similarity_distillation,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_info_nce_hand_example():
    # two orthogonal pairs, perfectly aligned: logits = scale * I
    q = torch.eye(2)
    loss = info_nce(q, q.clone(), scale=1.0)
    expected = -math.log(math.e / (math.e + 1.0))  # softmax of [1, 0] at the right index
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_aligned_beats_shuffled():
    q = unit(16, 32)
    d = F.normalize(q + 0.05 * unit(16, 32, seed=1), dim=-1)
    aligned = info_nce(q, d, 20.0)
    shuffled = info_nce(q, d[torch.randperm(16, generator=torch.Generator().manual_seed(3))], 20.0)
    assert aligned.item() < 0.1 < shuffled.item()


def test_symmetric_is_mean_of_both_directions():
    q, d = unit(8, 16), unit(8, 16, seed=1)
    one_way = info_nce(q, d, 10.0, symmetric=False)
    other_way = info_nce(d, q, 10.0, symmetric=False)
    both = info_nce(q, d, 10.0, symmetric=True)
    assert both.item() == pytest.approx(0.5 * (one_way + other_way).item(), rel=1e-6)
    labels = torch.arange(8)
    manual = F.cross_entropy(10.0 * q @ d.T, labels)
    assert one_way.item() == pytest.approx(manual.item(), rel=1e-6)
    assert InfoNCELoss(scale=10.0)(q, d).item() == pytest.approx(both.item(), rel=1e-6)
    assert InfoNCELoss(scale=10.0, symmetric=False)(q, d).item() == pytest.approx(one_way.item())


def test_info_nce_global_candidates_match_full_batch():
    # what each rank computes under data parallelism: its rows against the global batch
    q, d = unit(8, 16), unit(8, 16, seed=1)
    full = info_nce(q, d, 20.0)
    halves = [info_nce(q[i:i + 4], d[i:i + 4], 20.0, all_q=q, all_d=d, offset=i) for i in (0, 4)]
    assert (0.5 * (halves[0] + halves[1])).item() == pytest.approx(full.item(), rel=1e-6)


def test_exit_weights():
    assert exit_weights((2, 4)) == (0.5, 1.0)
    assert exit_weights((4, 9, 18, 27, 36)) == (4 / 36, 9 / 36, 18 / 36, 27 / 36, 1.0)
    assert exit_weights((2, 4), num_layers=8) == (0.25, 0.5)
    assert exit_weights((2, 4), "uniform") == (1.0, 1.0)
    assert exit_weights((2, 4), [0.3, 0.7]) == (0.3, 0.7)
    for bad in ([1.0], [0.0, 0.0], [-1.0, 2.0], "cubic"):
        with pytest.raises(ValueError):
            exit_weights((2, 4), bad)
    with pytest.raises(ValueError):
        exit_weights((2, 4), num_layers=3)
    with pytest.raises(ValueError):
        exit_weights((2, 2))


def test_multi_exit_total_is_weighted_sum():
    q2, d2, q4, d4 = unit(6, 8), unit(6, 8, seed=1), unit(6, 8, seed=2), unit(6, 8, seed=3)
    loss = MultiExitLoss(InfoNCELoss(scale=20.0), exit_layers=(2, 4))
    assert loss.weights == (0.5, 1.0)
    out = loss([(q2, d2), (q4, d4)])
    l2, l4 = info_nce(q2, d2, 20.0), info_nce(q4, d4, 20.0)
    assert out.total.item() == pytest.approx(0.5 * l2.item() + 1.0 * l4.item(), rel=1e-6)
    assert out.exit(2).base.item() == pytest.approx(l2.item(), rel=1e-6)
    assert out.exit(2).weight == 0.5 and out.exit(4).weight == 1.0
    assert sum(e.total for e in out.exits).item() == pytest.approx(out.total.item(), rel=1e-6)
    flat = out.as_floats()
    assert set(flat) == {"loss", "exit2/loss", "exit4/loss"}
    with pytest.raises(ValueError):
        loss([(q2, d2)])


def test_multi_exit_uniform_and_list_weights():
    q, d = unit(4, 8), unit(4, 8, seed=1)
    base = info_nce(q, d, 20.0).item()
    uniform = MultiExitLoss(InfoNCELoss(), (1, 3), "uniform")([(q, d), (q, d)])
    assert uniform.total.item() == pytest.approx(2 * base, rel=1e-6)
    listed = MultiExitLoss(InfoNCELoss(), (1, 3), [0.25, 2.0])([{"q": q, "d": d}, (q, d)])
    assert listed.total.item() == pytest.approx(2.25 * base, rel=1e-6)


def test_mlm_and_icc_losses():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    expected = 0.5 * (F.cross_entropy(logits[0, 1:2], torch.tensor([4]))
                      + F.cross_entropy(logits[1, 3:4], torch.tensor([7])))
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # nothing masked: zero, not NaN, and still part of the graph
    empty = mlm_loss(logits.requires_grad_(), torch.full((2, 5), -100))
    assert empty.item() == 0.0 and empty.requires_grad
    icc_logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    icc_labels = torch.tensor([0, 1])
    expected_icc = F.cross_entropy(icc_logits, icc_labels)
    assert icc_loss(icc_logits, icc_labels).item() == pytest.approx(expected_icc.item())


def test_pretraining_loss_per_exit_breakdown():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    icc_labels = torch.tensor([0, 1])
    per_exit, expected = [], 0.0
    for layer, weight in ((2, 0.5), (4, 1.0)):
        logits, icc = torch.randn(2, 5, 11, generator=g), torch.randn(2, 2, generator=g)
        per_exit.append((logits, labels, icc, icc_labels))
        expected += weight * (mlm_loss(logits, labels) + 0.5 * icc_loss(icc, icc_labels)).item()
    out = MultiExitLoss(PretrainingLoss(icc_weight=0.5), (2, 4))(per_exit)
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert set(out.exit(4).terms) == {"mlm", "icc"}
    assert set(out.as_floats()) == {"loss", "exit2/loss", "exit2/mlm", "exit2/icc",
                                    "exit4/loss", "exit4/mlm", "exit4/icc"}
    with pytest.raises(ValueError):
        PretrainingLoss(mlm_weight=0.0, icc_weight=0.0)


def test_similarity_distillation():
    q, d = unit(8, 16), unit(8, 16, seed=1)
    for kind in ("kl", "mse"):
        assert similarity_distillation(q, d, q, d, 0.05, kind).item() == pytest.approx(0.0, abs=1e-6)
    other_q, other_d = unit(8, 16, seed=2), unit(8, 16, seed=3)
    kl = SimilarityDistillation("kl", temperature=0.05)(other_q, other_d, q, d)
    assert kl.item() > 0.1
    # hand check of one direction: KL(p_teacher || p_student) averaged over rows
    p_t = F.softmax(q @ d.T / 0.05, dim=-1)
    log_p_s = F.log_softmax(other_q @ other_d.T / 0.05, dim=-1)
    manual = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    one_way = similarity_distillation(other_q, other_d, q, d, 0.05, "kl", symmetric=False)
    assert one_way.item() == pytest.approx(manual.item(), rel=1e-5)
    # the teacher is detached
    tq = q.clone().requires_grad_()
    sq = other_q.clone().requires_grad_()
    similarity_distillation(sq, other_d, tq, d, 0.05).backward()
    assert tq.grad is None and sq.grad is not None
    with pytest.raises(ValueError):
        SimilarityDistillation("js")
    with pytest.raises(ValueError):
        SimilarityDistillation(temperature=0.0)


def test_embedding_anchor():
    x = unit(4, 8)
    assert embedding_anchor(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_anchor(x, -x).item() == pytest.approx(4.0, abs=1e-5)
    y = unit(4, 8, seed=1)
    expected = (2 - 2 * (x * y).sum(-1)).mean()
    assert EmbeddingAnchor()(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_retrieval_loss_composes_terms():
    qs = [unit(6, 8, seed=s) for s in (0, 1)]
    ds = [unit(6, 8, seed=s) for s in (2, 3)]
    tq, td = unit(6, 8, seed=4), unit(6, 8, seed=5)
    loss = RetrievalLoss((2, 6), contrastive=InfoNCELoss(20.0),
                         distill=SimilarityDistillation("kl", 0.05), distill_weight=0.5,
                         anchor=EmbeddingAnchor(), anchor_weight=2.0)
    out = loss(qs, ds, tq, td)
    nce = [info_nce(q, d, 20.0).item() for q, d in zip(qs, ds)]
    kl = similarity_distillation(qs[0], ds[0], qs[1], ds[1], 0.05).item()
    anchors = [(embedding_anchor(q, tq) + embedding_anchor(d, td)).item() for q, d in zip(qs, ds)]
    expected = (2 / 6) * nce[0] + nce[1] + 0.5 * kl + 2.0 * sum(anchors)
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    assert "distill" in out.exit(2).terms and "distill" not in out.exit(6).terms
    assert sum(e.total for e in out.exits).item() == pytest.approx(out.total.item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss(qs, ds)  # anchor without teacher embeddings

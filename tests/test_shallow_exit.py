"""Exits that own their blocks (hf-adapter ``branches``) and the shallow-exit recipe that trains
them (training/recipes/shallow_exit.py): the deep exit must not move, the branch must export as
its exit, and a stopped run must resume to the same weights as an unbroken one."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mose_training.checkpoint import load_checkpoint, save_checkpoint
from mose_training.hf_adapter import AdapterError, HFMultiExitEncoder, base_model_path
from mose_training.recipes import shallow_exit
from mose_training.recipes.shallow_exit import (
    ShallowExitConfig,
    batch_for_step,
    load_shallow_config,
    prepare_student,
    train_shallow,
)

# all-MiniLM's tokenizer and vocabulary, a small random 3-layer body: fast, and real text in.
SMALL = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 3,
         "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 256,
         "type_vocab_size": 2, "pad_token_id": 0}
TOKENIZER = base_model_path() / "tokenizer.json"


def _model(branches=None, seed=0) -> HFMultiExitEncoder:
    torch.manual_seed(seed)
    return HFMultiExitEncoder(SMALL, exit_layers=(2, 3), projection=32, max_tokens=64,
                              branches=branches).eval()


def _batch(n=4, t=12):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (n, t), generator=gen)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return ids * mask, mask


def _with_branch(plain: HFMultiExitEncoder) -> HFMultiExitEncoder:
    branched = _model({"2": 2})
    state = plain.state_dict()
    for i in range(2):
        for k, v in list(state.items()):
            if k.startswith(f"backbone.encoder.layer.{i}."):
                state[f"branches.2.{i}." + k[len(f"backbone.encoder.layer.{i}."):]] = v
    branched.load_state_dict(state, strict=True)
    return branched


def _trained_branch() -> HFMultiExitEncoder:
    """A branched model whose branch has moved away from the shared blocks."""
    branched = _with_branch(_model())
    with torch.no_grad():
        for p in branched.branches["2"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return branched


def test_a_branch_starts_as_the_shared_blocks_and_moves_only_its_exit():
    plain = _model()
    branched = _with_branch(plain)
    ids, mask = _batch()
    with torch.no_grad():
        before = branched(ids, mask)
        torch.testing.assert_close(before[2], plain(ids, mask)[2], atol=0, rtol=0)
        for p in branched.branches["2"].parameters():
            p.add_(0.05 * torch.randn_like(p))
        after = branched(ids, mask)
    torch.testing.assert_close(after[3], before[3], atol=0, rtol=0)  # the deep exit: untouched
    assert (after[2] - before[2]).abs().max() > 1e-3


def test_a_branched_exit_runs_no_shared_block_and_exports_its_own_blocks():
    branched = _trained_branch()
    ids, mask = _batch()
    calls: list[int] = []
    hooks = [b.register_forward_hook(lambda *_a, i=i: calls.append(i))
             for i, b in enumerate(branched.backbone.encoder.layer, start=1)]
    try:
        with torch.no_grad():
            out = branched(ids, mask, exits=(2,))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    module = branched.exit_module(2).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(ids, mask), out[2], atol=0, rtol=0)
    own = branched.branches["2"][0].attention.self.query.weight
    assert torch.equal(module.layers[0].attention.self.query.weight, own)
    assert len(branched.exit_module(3).layers) == 3
    assert branched.exit_module(3).layers[0] is branched.backbone.encoder.layer[0]


def test_branches_survive_a_checkpoint_round_trip(tmp_path):
    branched = _trained_branch()
    save_checkpoint(branched, tmp_path / "ckpt", tokenizer_file=TOKENIZER)
    meta = json.loads((tmp_path / "ckpt" / "mose_checkpoint.json").read_text())
    assert meta["config"]["branches"] == {"2": 2}
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    ids, mask = _batch()
    with torch.no_grad():
        for layer in (2, 3):
            torch.testing.assert_close(loaded(ids, mask)[layer], branched(ids, mask)[layer],
                                       atol=0, rtol=0)


def test_a_branched_exit_under_another_branch_feeds_it_the_shared_state():
    """Exit 2 owns block 2 and exit 3 owns block 3: exit 3 must start from the shared block 2."""
    torch.manual_seed(0)
    both = HFMultiExitEncoder(SMALL, exit_layers=(2, 3), projection=32, max_tokens=64,
                              branches={"2": 1, "3": 1}).eval()
    with torch.no_grad():
        for p in both.branches["2"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask = _batch()
    with torch.no_grad():
        together = both(ids, mask)
        torch.testing.assert_close(together[3], both(ids, mask, exits=(3,))[3], atol=0, rtol=0)
        torch.testing.assert_close(together[2], both(ids, mask, exits=(2,))[2], atol=0, rtol=0)


@pytest.mark.parametrize("branches", [{"2": 3}, {"1": 1}, {"2": 0}])
def test_a_branch_must_sit_under_an_exit_and_fit_in_it(branches):
    with pytest.raises(AdapterError, match="branch"):
        _model(branches)


def test_a_branched_checkpoint_exports_each_exit_with_parity(tmp_path):
    from mose_export.exporter import export_model
    from mose_export.onnx_export import attention_blocks
    from mose_lsp.encoder import ModelEncoder

    branched = _trained_branch()
    save_checkpoint(branched, tmp_path / "ckpt", tokenizer_file=TOKENIZER)
    result = export_model(tmp_path / "ckpt", tmp_path / "out", int8=False, index_exit=2,
                          rerank_exit=3)
    assert [attention_blocks(tmp_path / "out" / f"layer{k}.onnx") for k in (2, 3)] == [2, 3]
    assert all(e.max_abs_diff <= 1e-4 for e in result.parity.exits)
    enc = ModelEncoder.open(tmp_path / "out", threads=1)
    texts = ["def add(a, b):\n    return a + b", "read a json file"]
    from mose_training.evaluation import TorchEncoder

    ref = TorchEncoder(branched, TOKENIZER)
    for layer in (2, 3):
        np.testing.assert_allclose(enc.encode(texts, "code", layer), ref.encode(texts, "code", layer),
                                   atol=1e-4)


# -- the recipe ---------------------------------------------------------------------------------

def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch():
    n, b = 50, 8
    first = [batch_for_step(s, n, b, seed=3) for s in range(6)]  # one epoch: 6 batches of 8
    again = [batch_for_step(s, n, b, seed=3) for s in range(6)]
    for (i1, s1), (i2, s2) in zip(first, again):
        assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    seen = np.concatenate([i for i, _ in first])
    assert len(set(seen.tolist())) == len(seen) == 48
    assert not np.array_equal(batch_for_step(6, n, b, seed=3)[0], first[0][0])  # a new epoch
    assert not np.array_equal(batch_for_step(0, n, b, seed=4)[0], first[0][0])


def test_the_shipped_config_loads_and_unknown_keys_are_refused(tmp_path):
    cfg = load_shallow_config("training/configs/default-model-shallow.yaml")
    assert (cfg.train.exit, cfg.train.own_blocks, cfg.train.teacher_exit) == (2, 2, 6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(Exception, match="stepz"):
        load_shallow_config(bad)


def _pairs(path, groups=24):
    with open(path, "w", encoding="utf-8") as fh:
        for g in range(groups):
            name = f"fn_{g}"
            code = f"def {name}(x):\n    return x * {g} + len(str(x))"
            doc = f"Multiply x by {g} and add the length of its text."
            for variant, query, body in (
                    ("docstring", doc, code),
                    ("short", f"python multiply by {g}", code),
                    ("with_docstring", f"python multiply by {g}",
                     code.replace(":\n", f':\n    """{doc}"""\n', 1))):
                fh.write(json.dumps({"group": name, "lang": "python", "variant": variant,
                                     "query": query, "code": body}) + "\n")
    return path


@pytest.fixture()
def setup(tmp_path):
    save_checkpoint(_model(), tmp_path / "init", tokenizer_file=TOKENIZER)
    cfg = ShallowExitConfig()
    cfg.data.groups, cfg.data.shard_groups = 24, 10
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps = 6, 8, 2
    cfg.train.save_every, cfg.train.lr, cfg.train.threads = 100, 1e-3, 1
    cfg.train.teacher_exit = 3
    pairs = _pairs(tmp_path / "pairs.jsonl")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    rng = np.random.default_rng(0)
    for offset, count in shallow_exit.teacher_shards(cfg):  # stand-in targets, unit vectors
        arrays = {}
        for name, _ in shallow_exit.FIELDS:
            v = rng.standard_normal((count, 32))
            arrays[name] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
        np.savez(teacher / f"teacher-{offset:07d}.npz", **arrays)
    return tmp_path, cfg, pairs, teacher


def _trained(folder):
    model, _ = load_checkpoint(folder)
    return {k: v for k, v in model.state_dict().items()}


def test_training_moves_only_the_branch_and_its_head(setup):
    root, cfg, pairs, teacher = setup
    final = train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "run"), cfg,
                          log=lambda _m: None)
    start, end = _trained(root / "init"), _trained(final)
    for key, value in end.items():
        if key.startswith(("branches.2.", "heads.2.")):
            continue
        assert torch.equal(value, start[key]), key  # shared blocks, embeddings, deep head
    moved = [k for k in end if k.startswith("branches.2.") and k.endswith("weight")]
    assert moved and all(not torch.equal(end[k], start[k.replace("branches.2.", "backbone.encoder.layer.")])
                         for k in moved if "LayerNorm" not in k)


def test_a_stopped_run_resumes_to_the_weights_of_an_unbroken_one(setup):
    root, cfg, pairs, teacher = setup
    whole = train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "a"), cfg,
                          log=lambda _m: None)
    assert train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "b"), cfg,
                         log=lambda _m: None, stop_after=4) is None
    assert not (root / "b" / "checkpoint").exists()
    resumed = train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "b"), cfg,
                            log=lambda _m: None)
    a, b = _trained(whole), _trained(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_resuming_with_another_config_is_refused(setup):
    root, cfg, pairs, teacher = setup
    train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "run"), cfg,
                  log=lambda _m: None, stop_after=2)
    cfg.train.lr = 5e-4
    with pytest.raises(SystemExit, match="another config"):
        train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "run"), cfg,
                      log=lambda _m: None)


def test_teacher_shards_from_another_config_are_refused(setup):
    root, cfg, pairs, teacher = setup
    cfg.data.shard_groups = 12
    with pytest.raises(SystemExit, match="another config"):
        shallow_exit.load_teacher(teacher, cfg)


def test_prepare_student_freezes_all_but_the_branch_and_its_head(setup):
    root, cfg, _, _ = setup
    model, _ = prepare_student(str(root / "init"), cfg.train)
    trainable = {n.split(".")[0] + "." + n.split(".")[1]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"branches.2", "heads.2"}


def _suite(folder, groups=12):
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for g in range(groups):
            fh.write(json.dumps({"id": str(g), "text": f"def fn_{g}(x):\n    return x * {g}",
                                 "lang": "python"}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for g in range(groups):
            fh.write(json.dumps({"id": f"q{g}", "text": f"multiply by {g}", "kind": "text",
                                 "lang": "en", "relevant": [str(g)]}) + "\n")
    return folder


def test_score_interpolates_between_the_start_and_the_trained_state(setup):
    root, cfg, pairs, teacher = setup
    final = train_shallow(str(root / "init"), str(teacher), str(pairs), str(root / "run"), cfg,
                          log=lambda _m: None)
    suite = _suite(root / "suite")
    scores = shallow_exit.score_run(str(root / "init"), str(root / "run"), cfg, [str(suite)],
                                    [0.0, 1.0], log=lambda _m: None)
    suites = shallow_exit._load_suites([str(suite)])
    start, _ = prepare_student(str(root / "init"), cfg.train)
    trained, tok = load_checkpoint(final)
    assert [s["alpha"] for s in scores] == [0.0, 1.0] and scores[0]["step"] == cfg.train.steps
    assert scores[0]["suite"] == shallow_exit.score_exit(start, tok, 2, suites)["suite"]
    assert scores[1]["suite"] == shallow_exit.score_exit(trained, tok, 2, suites)["suite"]
    with pytest.raises(SystemExit, match="no state.pt"):
        shallow_exit.score_run(str(root / "init"), str(root / "nothing"), cfg, [str(suite)], [1.0])


def test_a_minority_share_fills_that_part_of_every_batch_from_the_other_languages():
    rows = [{"lang": "python"}] * 40 + [{"lang": "cpp"}] * 6 + [{"lang": "c"}] * 4
    minority = shallow_exit.minority_groups(rows)
    assert minority.tolist() == list(range(40, 50))
    seen = []
    for step in range(6):  # the minority pool (10) gives 2 slices of 4 per epoch
        idx, shapes = batch_for_step(step, len(rows), 8, seed=0, minority=minority,
                                     minority_share=0.5)
        again, _ = batch_for_step(step, len(rows), 8, seed=0, minority=minority,
                                  minority_share=0.5)
        assert np.array_equal(idx, again) and len(idx) == len(shapes) == 8
        assert sum(i >= 40 for i in idx) == 4
        seen.extend(int(i) for i in idx if i >= 40)
    assert len(set(seen[:8])) == 8  # no repeat within an epoch of the pool
    assert len(set(seen[8:16])) == 8  # and none within the next one
    plain, _ = batch_for_step(0, len(rows), 8, seed=0, minority=minority, minority_share=0.0)
    assert np.array_equal(plain, batch_for_step(0, len(rows), 8, seed=0)[0])

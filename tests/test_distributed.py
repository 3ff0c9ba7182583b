"""The recipes under torchrun: 2 CPU processes (gloo), tiny configs, a few steps.

Checks: both recipes finish with finite losses under DDP, every rank ends with the same
parameters, and (the cross-rank InfoNCE gather with gradient) a 2 x B run equals a single
process on the same 2B pairs; FSDP2 gives the same model too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mose_training.recipes.common import load_config
from mose_training.recipes.finetune import FinetuneConfig, FinetuneRecipe
from test_recipes import CONFIGS, STDLIB, make_suite, mine_pairs

pytestmark = pytest.mark.slow  # torchrun, two processes

# Run by each rank: train, then record this rank's view of the model and its losses.
DRIVER = '''
import hashlib, json, sys
from pathlib import Path
from mose_training.recipes import common
from mose_training.recipes.finetune import FinetuneConfig, FinetuneRecipe
from mose_training.recipes.pretrain import PretrainConfig, PretrainRecipe

out = Path(sys.argv[1])
jobs = json.loads(sys.argv[2])
for i, job in enumerate(jobs):
    cls, recipe_cls = ((PretrainConfig, PretrainRecipe) if job["recipe"] == "pretrain"
                       else (FinetuneConfig, FinetuneRecipe))
    recipe = recipe_cls(common.load_config(cls, job["config"], job["set"])).setup()
    recipe.train()
    if recipe.config.train.distributed == "fsdp":  # the shards gathered on every rank
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(recipe.module, options=StateDictOptions(full_state_dict=True))
    else:  # this rank's own replica
        state = recipe.encoder.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().numpy().tobytes())
    record = {"world": recipe.dist.world_size, "digest": digest.hexdigest(),
              "losses": [h["loss"] for h in recipe.history],
              "logged": [r["loss"] for r in recipe.metrics.records if "loss" in r],
              "evaluations": [e["mrr"] for e in getattr(recipe, "evaluations", [])]}
    name = f"{job['name']}-rank{recipe.dist.rank}.json"
    (out / name).write_text(json.dumps(record), encoding="utf-8")
    if i == len(jobs) - 1:  # one process group for every job
        recipe.close()
'''


def torchrun(tmp_path: Path, jobs: list[dict]) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(driver), str(tmp_path), json.dumps(jobs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)  # its own process group, so that a hang can be cleaned up
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("torchrun timed out:\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]


def read(tmp_path: Path, name: str) -> list[dict]:
    return [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, pairs_file) -> Path:
    """A small retrieval suite (docstring -> function) for evaluation during fine-tuning."""
    return make_suite(tmp_path_factory.mktemp("suite") / "stdlib-docs", pairs_file, 40)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    files = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "logging").glob("*.py"))
    rows = mine_pairs(files)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_two_process_gloo_ddp_and_fsdp(tmp_path, pairs_file, suite_dir):
    corpus = [str(STDLIB / "json"), str(STDLIB / "logging")]
    pre = tmp_path / "pre"
    pretrain = {"name": "pretrain", "recipe": "pretrain", "config": str(CONFIGS / "tiny-pretrain.yaml"),
                "set": [f"data.sources={json.dumps(corpus)}", f"output_dir={pre}",
                        "data.context_length=64", "data.num_samples=256", "train.batch_size=4",
                        "train.max_steps=4", "train.log_every=1", "train.save_every=2"]}
    tokenizer = pre / "tokenizer.json"  # trained by the pretraining job, on rank 0

    def finetune_set(out: Path, batch: int, how: str = "ddp") -> list[str]:
        return [f"model={{family: mose-starcoder2, preset: tiny, tokenizer: {tokenizer}}}",
                f"data.train=[{pairs_file}]", f"output_dir={out}", f"train.batch_size={batch}",
                "train.max_steps=4", "train.log_every=1", f"train.distributed={how}",
                "optim.lr=2e-3", "optim.warmup_steps=1", f"eval.suites=[{suite_dir}]",
                "eval.every=2", "eval.max_tokens=64"]

    jobs = [pretrain,
            {"name": "ddp", "recipe": "finetune", "config": str(CONFIGS / "tiny-finetune.yaml"),
             "set": finetune_set(tmp_path / "ddp", 4)},
            {"name": "fsdp", "recipe": "finetune", "config": str(CONFIGS / "tiny-finetune.yaml"),
             "set": finetune_set(tmp_path / "fsdp", 4, "fsdp")}]
    torchrun(tmp_path, jobs)

    for name in ("pretrain", "ddp", "fsdp"):
        ranks = read(tmp_path, name)
        assert [r["world"] for r in ranks] == [2, 2]
        assert ranks[0]["digest"] == ranks[1]["digest"], f"{name}: ranks disagree on parameters"
        for r in ranks:
            assert len(r["losses"]) == 4
            assert all(torch.isfinite(torch.tensor(r["losses"]))), r["losses"]
    assert (pre / "checkpoints" / "step-0000002" / "trainer_state.pt").is_file()
    assert (pre / "final" / "model.safetensors").is_file()

    # one process on the same 8 pairs per step as the two ranks' 4 + 4
    torch.set_num_threads(1)
    single = FinetuneRecipe(load_config(FinetuneConfig, CONFIGS / "tiny-finetune.yaml",
                                        finetune_set(tmp_path / "single", 8))).setup()
    single.train()
    expected = [h["loss"] for h in single.history]
    from safetensors.torch import load_file

    reference = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    for name in ("ddp", "fsdp"):
        logged = read(tmp_path, name)[0]["logged"]  # the loss averaged over the two ranks
        assert logged == pytest.approx(expected, rel=1e-4), (name, logged, expected)
        trained = load_file(str(tmp_path / name / "final" / "model.safetensors"))
        assert trained.keys() == reference.keys()
        gap = max((trained[k] - reference[k]).abs().max().item() for k in reference)
        print(name, "largest parameter difference to one process:", gap)
        assert gap < 1e-4, f"{name}: parameters differ from one process by {gap}"

    # eval.suites during training (steps 2 and 4): scored on rank 0, every rank taking part
    # (under FSDP, in the gathering of the shards); the same model gives the same scores.
    suite = "stdlib-docs"
    for name in ("ddp", "fsdp"):
        main, other = read(tmp_path, name)
        assert len(main["evaluations"]) == 2 and other["evaluations"] == []
    fsdp_mrr = [e for e in read(tmp_path, "fsdp")[0]["evaluations"]]
    ddp_mrr = [e for e in read(tmp_path, "ddp")[0]["evaluations"]]
    for f_eval, d_eval in zip(fsdp_mrr, ddp_mrr):
        (key,) = [k for k in f_eval if k.endswith(suite)]
        for exit_name, value in f_eval[key].items():
            assert 0 < value <= 1
            assert value == pytest.approx(d_eval[key][exit_name], abs=0.02)

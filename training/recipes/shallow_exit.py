"""Shallow-exit distillation: train blocks of the index exit's own, below its head.

The default model's index exit (layer 2) is cheap because it runs two blocks; with only its
head trained it keeps about 63 % of the deep exit's CoSQA MRR. This recipe gives the exit its
own copies of the blocks under it (``HFMultiExitEncoder`` ``branches``) and trains them, with
its head, by embedding distillation from the frozen full-depth model plus contrastive pairs.
The shared blocks, the embeddings and the deep exit's head stay frozen, so the deep exit is
bit for bit the model it starts from; each exit is exported as its own graph, so the branch
costs the index exit nothing at run time.

1. ``teacher``: the frozen full-depth vectors (the int8 export of the base model, deepest exit)
   of every text of a seeded sample of function groups: two queries (docstring paragraph, short
   web-style query) and two codes (without / with the docstring) per group, truncated to the
   training lengths. Written in shards, so a stopped run continues with the next shard.
2. ``train``: per step, ``batch_size`` groups (a seeded permutation per epoch), each as one of
   the two mined shapes (docstring -> code, short query -> code with docstring); loss =
   ``distill`` x (2 - 2cos(student, teacher)) over queries and codes + ``contrastive`` x
   symmetric InfoNCE (in-batch negatives). Everything random is derived from (seed, step), and a
   state file is written every ``save_every`` steps, so a stopped run resumed from its folder
   takes the same steps as an unbroken one. Optionally scores the exit on evaluation suites
   every ``eval_every`` steps (the learning curve, ``curve.jsonl``).
3. The final model is a checkpoint that ``mose export`` reads (``<out>/checkpoint``).
4. ``score``: the exit of a run's saved state on evaluation suites, optionally with its trained
   weights interpolated towards the starting ones (``alpha`` x trained + (1 - alpha) x start,
   the branch and head only), to measure what a smaller step away from the start keeps.

Config: ``training/configs/default-model-shallow.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .exit_heads import sample_groups

FIELDS = (("q_doc", "text"), ("q_short", "text"), ("code", "code"), ("code_doc", "code"))
SHAPES = (("q_doc", "code"), ("q_short", "code_doc"))  # the mined pair shapes
STATE_FILE = "state.pt"
CURVE_FILE = "curve.jsonl"


@dataclass
class ShallowDataConfig:
    groups: int = 20000  # function groups sampled (seeded) from the pairs, 4 texts each
    query_max_tokens: int = 48
    code_max_tokens: int = 160
    shard_groups: int = 2000  # teacher vectors are written this many groups at a time
    minority_share: float = 0.0  # share of each batch drawn from groups in languages other
    # than the sample's most common one (0: batches drawn from all groups alike)


@dataclass
class ShallowTrainConfig:
    exit: int = 2  # the exit that gets blocks of its own
    own_blocks: int = 2  # how many of the blocks under it it owns (copies, then trained)
    teacher_exit: int = 6
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1.0e-4  # AdamW, linear warm-up then linear decay to 0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    distill: float = 1.0  # 2 - 2cos to the teacher, queries and codes
    contrastive: float = 0.1  # symmetric InfoNCE, in-batch negatives
    scale: float = 20.0
    save_every: int = 50
    eval_every: int = 200
    threads: int = 2


@dataclass
class ShallowExitConfig:
    """``training/configs/default-model-shallow.yaml``: every field, with its default."""

    seed: int = 0
    data: ShallowDataConfig = field(default_factory=ShallowDataConfig)
    train: ShallowTrainConfig = field(default_factory=ShallowTrainConfig)


def load_shallow_config(path: str | Path, overrides: list[str] | None = None) -> ShallowExitConfig:
    """The YAML config, unknown keys and wrong types rejected (``common.load_config``)."""
    from .common import load_config

    return load_config(ShallowExitConfig, path, list(overrides or []))


# ============================================================================================
# 1. teacher vectors
# ============================================================================================


def teacher_shards(cfg: ShallowExitConfig) -> list[tuple[int, int]]:
    """(offset, count) of each shard of the sampled groups."""
    step = cfg.data.shard_groups
    return [(o, min(step, cfg.data.groups - o)) for o in range(0, cfg.data.groups, step)]


def cache_teacher(model_dir: str, pairs_file: str, out: str, cfg: ShallowExitConfig,
                  log=print) -> Path:
    """Write the teacher's vectors of every sampled text under ``out`` (one file per shard;
    shards already written are kept, so an interrupted run continues)."""
    from mose_lsp.encoder import ModelEncoder

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    enc = ModelEncoder.open(model_dir, threads=cfg.train.threads)
    exit = cfg.train.teacher_exit
    if exit not in enc.exits:
        raise SystemExit(f"error: the teacher {model_dir} has no exit {exit} (its exits: "
                         f"{list(enc.exits)}); set train.teacher_exit")
    rows = sample_groups(pairs_file, cfg.data.groups, cfg.seed)
    if len(rows) < cfg.data.groups:
        raise SystemExit(f"error: {pairs_file} has {len(rows)} complete function groups, the "
                         f"config asks for {cfg.data.groups}; lower data.groups")
    for offset, count in teacher_shards(cfg):
        path = root / f"teacher-{offset:07d}.npz"
        if path.is_file():
            continue
        part = rows[offset:offset + count]
        arrays: dict[str, np.ndarray] = {}
        t = time.time()
        for name, kind in FIELDS:
            limit = cfg.data.query_max_tokens if kind == "text" else cfg.data.code_max_tokens
            langs = [r["lang"] for r in part] if kind == "code" else None
            arrays[name] = enc.encode([r[name] for r in part], kind, exit, langs,
                                      max_tokens=limit).astype(np.float16)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        log(f"teacher: groups {offset}-{offset + count} in {time.time() - t:.0f}s")
    return root


def load_teacher(root: str | Path, cfg: ShallowExitConfig) -> dict[str, np.ndarray]:
    parts = []
    for offset, count in teacher_shards(cfg):
        path = Path(root) / f"teacher-{offset:07d}.npz"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; run the teacher step first")
        part = dict(np.load(path))
        if len(part["code"]) != count:
            raise SystemExit(f"error: {path} holds {len(part['code'])} groups, the config "
                             f"{count}: it was made with another config; delete {root}")
        parts.append(part)
    return {name: np.concatenate([p[name] for p in parts]).astype(np.float32)
            for name, _ in FIELDS}


# ============================================================================================
# 2. training
# ============================================================================================


def prepare_student(init: str, cfg: ShallowTrainConfig):
    """The starting checkpoint with a branch of ``own_blocks`` blocks for ``exit``; only the
    branch and the exit's head train."""
    from ..checkpoint import load_checkpoint, model_from_config

    model, tokenizer = load_checkpoint(init)
    if getattr(model, "kind", None) != "hf-adapter":
        raise SystemExit(f"error: {init} is a {getattr(model, 'kind', '?')} checkpoint; this "
                         f"recipe trains hf-adapter models")
    if str(cfg.exit) not in model.branches:
        config = model.config_dict()
        config["branches"] = {str(cfg.exit): cfg.own_blocks}
        branched = model_from_config(model.kind, config)
        state = model.state_dict()
        for i, layer in enumerate(range(cfg.exit - cfg.own_blocks, cfg.exit)):
            prefix = f"backbone.encoder.layer.{layer}."
            for k, v in list(state.items()):
                if k.startswith(prefix):
                    state[f"branches.{cfg.exit}.{i}." + k[len(prefix):]] = v
        branched.load_state_dict(state, strict=True)
        model = branched
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith((f"branches.{cfg.exit}.", f"heads.{cfg.exit}."))
    return model, tokenizer


def _optimizer(model, cfg: ShallowTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, grouped as every recipe groups them."""
    from .common import param_groups

    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)


def _lr(step: int, cfg: ShallowTrainConfig) -> float:
    from .common import lr_factor

    return cfg.lr * lr_factor(step, schedule="linear", warmup_steps=cfg.warmup_steps,
                              max_steps=cfg.steps)


def batch_for_step(step: int, n: int, batch_size: int, seed: int,
                   minority: np.ndarray | None = None,
                   minority_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Group indices and shape choices of optimiser step ``step`` (0-based): a function of
    (seed, step) only, so a resumed run draws the same batches. With ``minority`` (indices of
    the groups in the less common languages) and a ``minority_share``, that share of every
    batch comes from those groups and the rest from the others, each pool in its own epochs."""
    take = round(minority_share * batch_size) if minority is not None and len(minority) else 0
    if take == 0:
        per_epoch = max(1, n // batch_size)
        epoch, slot = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = order[slot * batch_size:(slot + 1) * batch_size]
        shapes = np.random.default_rng([seed, epoch, slot, 1]).integers(len(SHAPES), size=len(idx))
        return idx, shapes
    majority = np.setdiff1d(np.arange(n), minority)
    idx = np.concatenate([_draw(step, np.asarray(minority), take, seed, 2),
                          _draw(step, majority, batch_size - take, seed, 3)])
    shapes = np.random.default_rng([seed, step, 4]).integers(len(SHAPES), size=len(idx))
    return idx, shapes


def _draw(step: int, pool: np.ndarray, k: int, seed: int, tag: int) -> np.ndarray:
    """``k`` members of ``pool`` for ``step``: consecutive slices of a seeded permutation per
    epoch of the pool."""
    if k <= 0 or len(pool) == 0:
        return pool[:0]
    per_epoch = max(1, len(pool) // k)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, tag, epoch]).permutation(len(pool))
    return pool[order[slot * k:(slot + 1) * k]]


def minority_groups(rows: list[dict[str, str]]) -> np.ndarray:
    """Indices of the groups whose language is not the sample's most common one."""
    langs = [r.get("lang", "") for r in rows]
    if not langs:
        return np.zeros(0, dtype=np.int64)
    common = max(set(langs), key=langs.count)
    return np.array([i for i, lang in enumerate(langs) if lang != common], dtype=np.int64)


def _encode(model, inputs, texts: list[str], kind: str, limit: int, exit: int,
            langs: list[str] | None = None) -> torch.Tensor:
    from ..evaluation import padded_tensors

    ids, mask = padded_tensors(inputs, inputs.encode(texts, kind, limit, langs))
    return model(ids, mask, exits=(exit,)).embeddings[0]


def train_shallow(init: str, teacher_dir: str, pairs_file: str, out: str,
                  cfg: ShallowExitConfig, suites: list[str] | None = None, log=print,
                  stop_after: int | None = None) -> Path | None:
    """Train (or resume) the branch; returns the final checkpoint folder, or None when
    ``stop_after`` steps of this call ended it early (its state saved: run again to go on)."""
    from ..checkpoint import save_checkpoint
    from ..evaluation import model_inputs

    t_cfg = cfg.train
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(t_cfg.threads)
    model, tokenizer = prepare_student(init, t_cfg)
    if tokenizer is None:
        raise SystemExit(f"error: {init} has no tokenizer.json")
    inputs = model_inputs(model, tokenizer)
    teacher = {k: torch.from_numpy(v) for k, v in load_teacher(teacher_dir, cfg).items()}
    rows = sample_groups(pairs_file, cfg.data.groups, cfg.seed)
    minority = minority_groups(rows)
    if cfg.data.minority_share:
        log(f"{len(minority)} of {len(rows)} groups in the less common languages make "
            f"{cfg.data.minority_share:.0%} of every batch")
    opt = _optimizer(model, t_cfg)
    step = 0
    state_path = root / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config"] != asdict(cfg):
            raise SystemExit(f"error: {state_path} was written with another config; delete "
                             f"{root} to start again, or run with the config it was made with")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resuming at step {step}/{t_cfg.steps}")
    evaluations = [_load_suites(suites)] if suites else []
    if evaluations and step == 0:
        _record_curve(root, model, tokenizer, t_cfg, evaluations[0], step, None, log)
    trainable = [p for p in model.parameters() if p.requires_grad]
    q_lim, c_lim = cfg.data.query_max_tokens, cfg.data.code_max_tokens
    t0, losses = time.time(), []
    end = t_cfg.steps if stop_after is None else min(t_cfg.steps, step + stop_after)
    while step < end:
        model.train()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, reproducible on resume
        idx, shapes = batch_for_step(step, len(rows), t_cfg.batch_size, cfg.seed, minority,
                                     cfg.data.minority_share)
        qf = [SHAPES[s][0] for s in shapes]
        cf = [SHAPES[s][1] for s in shapes]
        q_texts = [rows[i][f] for i, f in zip(idx, qf)]
        c_texts = [rows[i][f] for i, f in zip(idx, cf)]
        langs = [rows[i]["lang"] for i in idx]
        tq = torch.stack([teacher[f][i] for i, f in zip(idx, qf)])
        tc = torch.stack([teacher[f][i] for i, f in zip(idx, cf)])
        sq = _encode(model, inputs, q_texts, "text", q_lim, t_cfg.exit)
        sc = _encode(model, inputs, c_texts, "code", c_lim, t_cfg.exit, langs)
        distill = (2 - 2 * (sq * tq).sum(-1)).mean() + (2 - 2 * (sc * tc).sum(-1)).mean()
        logits = t_cfg.scale * sq @ sc.T
        target = torch.arange(len(idx))
        nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        loss = t_cfg.distill * distill + t_cfg.contrastive * nce
        for group in opt.param_groups:
            group["lr"] = _lr(step, t_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        losses.append((loss.item(), distill.item(), nce.item()))
        if step % 10 == 0 or step == t_cfg.steps:
            mean = np.mean(losses, axis=0)
            losses = []
            rate = (time.time() - t0) / 10
            t0 = time.time()
            log(f"step {step}/{t_cfg.steps} loss {mean[0]:.4f} (distill {mean[1]:.4f}, "
                f"infonce {mean[2]:.4f}) lr {_lr(step - 1, t_cfg):.2e} {rate:.2f} s/step")
        if step % t_cfg.save_every == 0 or step == end:
            _save_state(state_path, model, opt, step, cfg)
        if evaluations and (step % t_cfg.eval_every == 0 or step == t_cfg.steps):
            _record_curve(root, model, tokenizer, t_cfg, evaluations[0], step, losses, log)
            t0 = time.time()
    if step < t_cfg.steps:
        log(f"stopped at step {step}/{t_cfg.steps}; run the same command to go on")
        return None
    model.eval()
    final = root / "checkpoint"
    save_checkpoint(model, final, tokenizer_file=tokenizer,
                    extra={"training": {"recipe": "shallow_exit", "init": str(init),
                                        "config": asdict(cfg)}})
    log(f"checkpoint {final}")
    return final


def _save_state(path: Path, model, opt, step: int, cfg: ShallowExitConfig) -> None:
    trained = {k: v for k, v in model.state_dict().items()
               if k.startswith((f"branches.{cfg.train.exit}.", f"heads.{cfg.train.exit}."))}
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": trained, "optimizer": opt.state_dict(),
                "config": asdict(cfg)}, tmp)
    tmp.replace(path)


def _load_suites(paths: list[str]):
    from mose_lsp.evaluate import load_suites

    return [s for p in paths for s in load_suites(p)]


def score_exit(model, tokenizer, exit: int, suites) -> dict:
    """MRR and Recall@16/@100 (x 100) of ``exit`` on each suite, the live model in float32."""
    from mose_lsp.evaluate import evaluate

    from ..evaluation import TorchEncoder

    model.eval()
    encoder = TorchEncoder(model, tokenizer, batch_size=64)
    record: dict = {}
    for suite in suites:
        with torch.no_grad():
            result = evaluate(encoder, suite, exits=(exit,), recall_ks=(16, 100))
        metrics = result.exits[0].metrics
        record[suite.name] = {"mrr": round(100 * metrics.mrr, 2),
                              "recall@16": round(100 * metrics.recall[16], 2),
                              "recall@100": round(100 * metrics.recall[100], 2)}
    return record


def _record_curve(root: Path, model, tokenizer, cfg: ShallowTrainConfig, suites, step: int,
                  _losses, log) -> None:
    """Score the exit on the suites and append the point to the run's learning curve."""
    t = time.time()
    record = {"step": step, **score_exit(model, tokenizer, cfg.exit, suites),
              "seconds": round(time.time() - t, 1)}
    with open(root / CURVE_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    log(f"curve {json.dumps(record)}")


def score_run(init: str, run: str, cfg: ShallowExitConfig, suites: list[str],
              alphas: list[float], log=print) -> list[dict]:
    """Score a run's saved state at each interpolation ``alpha`` towards the start (1: as
    trained, 0: the starting model)."""
    state_path = Path(run) / STATE_FILE
    if not state_path.is_file():
        raise SystemExit(f"error: {run} holds no {STATE_FILE}; train first")
    torch.set_num_threads(cfg.train.threads)
    model, tokenizer = prepare_student(init, cfg.train)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    loaded = _load_suites(suites)
    out = []
    for alpha in alphas:
        mixed = {k: alpha * v + (1 - alpha) * start[k] for k, v in state["model"].items()}
        model.load_state_dict(mixed, strict=False)
        record = {"step": int(state["step"]), "alpha": alpha,
                  **score_exit(model, tokenizer, cfg.train.exit, loaded)}
        log(json.dumps(record))
        out.append(record)
    return out


# ============================================================================================
# CLI
# ============================================================================================


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mose_training.recipes.shallow_exit")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="cache the frozen full-depth model's vectors")
    t.add_argument("--model", required=True, help="model directory of the teacher (int8 export)")
    t.add_argument("--pairs", required=True)
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="folder of teacher shards")
    r = sub.add_parser("train", help="train the exit's own blocks (resumes from --out)")
    r.add_argument("--init", required=True, help="checkpoint to start from")
    r.add_argument("--teacher", required=True, help="folder written by the teacher step")
    r.add_argument("--pairs", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--out", required=True, help="run folder (state, curve, checkpoint)")
    r.add_argument("--suite", action="append", default=[],
                   help="evaluation suite folder scored every train.eval_every steps")
    c = sub.add_parser("score", help="score a run's saved state, optionally interpolated "
                       "towards the start")
    c.add_argument("--init", required=True, help="the checkpoint the run started from")
    c.add_argument("--run", required=True, help="run folder (holds state.pt)")
    c.add_argument("--config", required=True)
    c.add_argument("--suite", action="append", required=True)
    c.add_argument("--alpha", default="1", help="comma-separated interpolation weights")
    c.add_argument("--json", help="write the scores here")
    r.add_argument("--stop-after", type=int, help="train at most this many steps now (the "
                   "state is saved; the same command goes on from there)")
    for sp in (t, r, c):
        sp.add_argument("--set", action="append", default=[], help="field=value (YAML value)")
    a = p.parse_args(argv)
    cfg = load_shallow_config(a.config, a.set)
    if a.cmd == "score":
        try:
            alphas = [float(x) for x in a.alpha.split(",")]
        except ValueError:
            raise SystemExit(f"error: --alpha takes numbers separated by commas, got "
                             f"{a.alpha!r}") from None
        scores = score_run(a.init, a.run, cfg, a.suite, alphas,
                           log=lambda m: print(m, flush=True))
        if a.json:
            Path(a.json).write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")
    elif a.cmd == "teacher":
        cache_teacher(a.model, a.pairs, a.out, cfg, log=lambda m: print(m, flush=True))
    else:
        train_shallow(a.init, a.teacher, a.pairs, a.out, cfg, a.suite,
                      log=lambda m: print(m, flush=True), stop_after=a.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())

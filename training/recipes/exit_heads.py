"""Exit-head distillation on cached features: the cheap recipe behind the default model.

A CPU-only budget cannot afford thousands of full fwd+bwd steps, so this recipe trains only what
is cheap to train well: the per-exit Linear projection heads of an ``HFMultiExitEncoder`` whose
transformer blocks stay frozen. Everything frozen is computed once and cached:

1. ``cache``: run a model directory (``mose export`` of the untrained base model, int8) over a
   sample of training pairs (queries truncated to ``query_max_tokens``, code to
   ``code_max_tokens``) and over evaluation suites (as ``mose eval`` encodes them), storing every
   exit's pooled, L2-normalised vector. With an identity head these vectors ARE the base model's
   exits; the deepest one is the frozen teacher.
2. ``fit``: train a bias-free Linear head per exit on those vectors with the fine-tuning losses of
   ``training/losses.py`` (exit-weighted symmetric InfoNCE, optional KL similarity distillation
   from the deepest exit, optional embedding anchor to the teacher) plus an optional direct
   embedding-distillation term for the shallow exits (``2 - 2cos`` to the teacher's vector of the
   same text). A head without bias is scale invariant, so a head on the normalised pooled vector
   equals the same head on the raw pooled vector after the final L2 normalisation: the fitted
   heads drop into the model unchanged.
3. ``build``: put the heads on ``HFMultiExitEncoder.from_base_model`` and save a checkpoint that
   ``mose export`` reads.

Scores on cached evaluation features are a development proxy only; the shipped numbers come
from ``mose eval`` on the exported int8 model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# ============================================================================================
# 1. caching
# ============================================================================================


def encode_truncated(encoder, texts: list[str], kind: str, exit: int, max_tokens: int,
                     langs: list[str] | None = None) -> np.ndarray:
    """``ModelEncoder.encode`` with a shorter token limit than the exit's (training lengths):
    the runtime's tokenising, truncation, padding and batching, so the cached features are
    what the product computes for inputs of that length."""
    return encoder.encode(texts, kind, exit, langs, max_tokens=max_tokens)


def sample_groups(pairs_file: str, num_groups: int, seed: int,
                  offset: int = 0) -> list[dict[str, str]]:
    """One record per sampled function group: its two queries (docstring paragraph, short web-style
    query) and two codes (without / with the docstring), from ``mose train data`` pairs."""
    groups: dict[str, dict[str, str]] = {}
    with open(pairs_file, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            g = groups.setdefault(r["group"], {"lang": r.get("lang", "")})
            v = r.get("variant")
            if v == "docstring":
                g["q_doc"], g["code"] = r["query"], r["code"]
            elif v == "short":
                g["q_short"] = r["query"]
                g.setdefault("code", r["code"])
            elif v == "with_docstring":
                g["q_short"] = g.get("q_short", r["query"])
                g["code_doc"] = r["code"]
    full = [g for g in groups.values() if {"q_doc", "q_short", "code", "code_doc"} <= g.keys()]
    rng = random.Random(seed)
    rng.shuffle(full)
    return full[offset:offset + num_groups]


FIELDS = (("q_doc", "text", "query"), ("q_short", "text", "query"),
          ("code", "code", "code"), ("code_doc", "code", "code"))


def cache_pairs(model_dir: str, pairs_file: str, out: str, num_groups: int, seed: int,
                query_max_tokens: int, code_max_tokens: int, threads: int,
                offset: int = 0) -> None:
    from mose_lsp.encoder import ModelEncoder

    enc = ModelEncoder.open(model_dir, threads=threads)
    rows = sample_groups(pairs_file, num_groups, seed, offset)
    langs = [r["lang"] for r in rows]
    arrays: dict[str, np.ndarray] = {}
    for name, kind, role in FIELDS:
        texts = [r[name] for r in rows]
        limit = query_max_tokens if role == "query" else code_max_tokens
        for exit in enc.exits:
            t = time.time()
            arrays[f"{name}@{exit}"] = encode_truncated(enc, texts, kind, exit, limit,
                                                        langs if kind == "code" else None)
            print(f"cache {name}@{exit}: {len(texts)} in {time.time() - t:.0f}s", flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays, groups=np.array(len(rows)))


def cache_suites(model_dir: str, suites: list[str], out: str, threads: int) -> None:
    """Every exit's vectors of every suite, encoded exactly as ``mose eval`` does."""
    from mose_lsp.encoder import ModelEncoder
    from mose_lsp.evaluate import _encode_queries, load_suites

    enc = ModelEncoder.open(model_dir, threads=threads)
    arrays: dict[str, np.ndarray] = {}
    for path in suites:
        for suite in load_suites(path):
            for exit in enc.exits:
                t = time.time()
                arrays[f"{suite.name}|docs@{exit}"] = enc.encode(
                    [d.text for d in suite.documents], "code", exit,
                    [d.lang for d in suite.documents])
                arrays[f"{suite.name}|queries@{exit}"] = _encode_queries(enc, suite, exit)
                print(f"cache {suite.name}@{exit} in {time.time() - t:.0f}s", flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)


def load_caches(paths: list[str]) -> dict[str, np.ndarray]:
    """Pair caches concatenated in order (e.g. a first sample and its continuation)."""
    parts = [dict(np.load(p)) for p in paths]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if "@" in k}
    out["groups"] = np.array(sum(int(p["groups"]) for p in parts))
    return out


# ============================================================================================
# 2. fitting heads
# ============================================================================================


@dataclass
class HeadFitConfig:
    exits: list[int] = field(default_factory=lambda: [2, 6])
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    scale: float = 20.0  # InfoNCE logit scale
    exit_weights: str = "linear"
    num_layers: int = 6
    distill_kl: float = 0.0  # KL similarity distillation from the deepest exit
    distill_temperature: float = 0.05
    anchor: float = 0.0  # 2 - 2cos of every exit to the teacher (frozen deepest exit)
    anchor_deep: float | None = None  # the deepest exit's anchor coefficient (None: anchor)
    embed_distill: float = 0.0  # shallow exits only: 2 - 2cos to the teacher, all four texts
    identity_reg: float = 0.0  # squared distance of each head to the identity
    query_fields: list[str] = field(default_factory=lambda: ["q_doc", "q_short"])
    code_fields: list[str] = field(default_factory=lambda: ["code", "code_doc"])
    seed: int = 0
    threads: int = 1  # tiny matrices: one thread is fastest on a shared machine


@dataclass
class HeadsDataConfig:
    groups: int = 3000  # function groups sampled (seeded) from the pairs, 4 texts each
    query_max_tokens: int = 48
    code_max_tokens: int = 160


@dataclass
class ExitHeadsConfig:
    """``training/configs/default-model.yaml``: every field, with its default."""

    seed: int = 0  # sampling of the groups
    data: HeadsDataConfig = field(default_factory=HeadsDataConfig)
    heads: HeadFitConfig = field(default_factory=HeadFitConfig)


def load_heads_config(path: str | Path, overrides: list[str] | None = None) -> ExitHeadsConfig:
    """The YAML config, unknown keys and wrong types rejected (``common.load_config``)."""
    from .common import load_config

    return load_config(ExitHeadsConfig, path, list(overrides or []))


def fit_heads(cache: dict[str, np.ndarray], cfg: HeadFitConfig,
              log=print) -> dict[int, torch.Tensor]:
    """Linear (no bias) head weight per exit, identity initialised, trained on cached vectors.

    Each step draws ``batch_size`` groups and, for each, one (query, code) combination of the
    configured fields: docstring -> code and short query -> code with docstring (the CoSQA shape).
    """
    from ..losses import EmbeddingAnchor, InfoNCELoss, RetrievalLoss, SimilarityDistillation

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    exits = sorted(cfg.exits)
    deepest = exits[-1]
    feats = {k: torch.from_numpy(v) for k, v in cache.items() if "@" in k}
    n = feats[f"code@{deepest}"].shape[0]
    dim = feats[f"code@{deepest}"].shape[1]
    heads = {e: torch.nn.Parameter(torch.eye(dim)) for e in exits}
    opt = torch.optim.AdamW(list(heads.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = RetrievalLoss(
        exits, cfg.exit_weights, cfg.num_layers, contrastive=InfoNCELoss(cfg.scale, True),
        distill=SimilarityDistillation("kl", cfg.distill_temperature) if cfg.distill_kl else None,
        distill_weight=cfg.distill_kl,
        anchor=EmbeddingAnchor() if (cfg.anchor or cfg.anchor_deep) else None,
        anchor_weight=[cfg.anchor] * (len(exits) - 1) + [
            cfg.anchor if cfg.anchor_deep is None else cfg.anchor_deep])
    # query/code field combinations: (q_doc, code) and (q_short, code_doc) -- the mined variants
    combos = [("q_doc", "code"), ("q_short", "code_doc")]
    combos = [c for c in combos if c[0] in cfg.query_fields and c[1] in cfg.code_fields]
    gen = torch.Generator().manual_seed(cfg.seed)
    eye = torch.eye(dim)
    t0 = time.time()
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / 50) * max(0.0, 1 - step / cfg.steps) + 1e-8
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randperm(n, generator=gen)[:cfg.batch_size]
        which = torch.randint(len(combos), (1,), generator=gen).item()
        qf, cf = combos[which]
        q = [F.normalize(feats[f"{qf}@{e}"][idx] @ heads[e].T, dim=-1) for e in exits]
        d = [F.normalize(feats[f"{cf}@{e}"][idx] @ heads[e].T, dim=-1) for e in exits]
        tq, td = feats[f"{qf}@{deepest}"][idx], feats[f"{cf}@{deepest}"][idx]
        out = loss_fn(q, d, tq, td)
        total = out.total
        if cfg.embed_distill:
            for i, e in enumerate(exits[:-1]):
                total = total + cfg.embed_distill * (
                    (2 - 2 * (q[i] * tq).sum(-1)).mean() + (2 - 2 * (d[i] * td).sum(-1)).mean())
        if cfg.identity_reg:
            for e in exits:
                total = total + cfg.identity_reg * ((heads[e] - eye) ** 2).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
        if step % max(1, cfg.steps // 10) == 0 or step == cfg.steps:
            log(f"fit step {step}/{cfg.steps} loss {total.item():.4f} "
                f"({time.time() - t0:.1f}s)")
    return {e: heads[e].detach().clone() for e in exits}


class CachedSuiteEncoder:
    """The evaluation ``Encoder`` interface over one suite's cached vectors (``cache_suites``)
    with the exit heads applied, so that ``mose_lsp.evaluate.evaluate`` scores fitted heads
    exactly as ``mose eval`` scores a model, the search as shipped included."""

    def __init__(self, suite, cache: dict[str, np.ndarray],
                 heads: dict[int, torch.Tensor] | None) -> None:
        self.name = "cached features" + (" + fitted heads" if heads is not None else "")
        self.exits = tuple(sorted(int(k.split("@")[1]) for k in cache
                                  if k.startswith(f"{suite.name}|docs@")))
        self._vectors = {e: {"docs": _apply_head(cache[f"{suite.name}|docs@{e}"], heads, e),
                             "queries": _apply_head(cache[f"{suite.name}|queries@{e}"], heads, e)}
                         for e in self.exits}
        self._rows: dict[tuple[str, str, str], tuple[str, int]] = {}
        for i, d in enumerate(suite.documents):
            self._rows.setdefault(("code", d.lang or "", d.text), ("docs", i))
        for i, q in enumerate(suite.queries):
            self._rows.setdefault((q.kind, q.lang or "", q.text), ("queries", i))

    @property
    def index_exit(self) -> int:
        return self.exits[0]

    @property
    def rerank_exit(self) -> int:
        return self.exits[-1]

    def dim(self, exit: int) -> int:
        return int(self._vectors[exit]["docs"].shape[1])

    def encode(self, texts, kind: str, exit: int, langs=None) -> np.ndarray:
        langs = [""] * len(texts) if langs is None else langs
        try:
            rows = [self._rows[(kind, lang or "", text)] for text, lang in zip(texts, langs)]
        except KeyError as err:
            raise ValueError(f"{kind} input not in the cached suite: {err}") from None
        if not rows:
            return np.zeros((0, self.dim(exit)), dtype=np.float32)
        return np.stack([self._vectors[exit][part][i] for part, i in rows]).astype(np.float32)

    def foreground(self):
        return contextlib.nullcontext()


def _apply_head(x: np.ndarray, heads: dict[int, torch.Tensor] | None, e: int) -> np.ndarray:
    if heads is None:
        return x
    y = x @ heads[e].numpy().T
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def _evaluate_cached(suites_cache: dict[str, np.ndarray], suites: list[str],
                     heads: dict[int, torch.Tensor] | None, pipeline_k: int,
                     recall_ks: tuple[int, ...]):
    """``mose_lsp.evaluate.evaluate`` of every suite on the cached vectors (no lexical part:
    the heads are what is being judged)."""
    from mose_lsp.evaluate import PipelineSpec, evaluate, load_suites

    for path in suites:
        for suite in load_suites(path):
            encoder = CachedSuiteEncoder(suite, suites_cache, heads)
            pipeline = None
            if len(encoder.exits) >= 2:
                pipeline = PipelineSpec(encoder.index_exit, encoder.rerank_exit, pipeline_k)
            yield evaluate(encoder, suite, pipeline=pipeline, recall_ks=recall_ks,
                           lexical_weight=0.0)


def score_cached(suites_cache: dict[str, np.ndarray], suites: list[str],
                 heads: dict[int, torch.Tensor] | None, pipeline_k: int = 100
                 ) -> dict[str, dict[str, float]]:
    """Development proxy: MRR per exit (and the shallow->deep pipeline) with heads applied to
    cached suite vectors, scored by ``mose_lsp.evaluate``."""
    result: dict[str, dict[str, float]] = {}
    for res in _evaluate_cached(suites_cache, suites, heads, pipeline_k, (1, 10, 100)):
        row: dict[str, float] = {}
        for e in res.exits:
            row[f"mrr@{e.exit}"] = round(100 * e.metrics.mrr, 1)
            row[f"r100@{e.exit}"] = round(100 * e.metrics.recall[100], 1)
        if res.pipeline is not None:
            row["pipeline"] = round(100 * res.pipeline.metrics.mrr, 1)
        result[res.suite] = row
    return result


def score_deep_index(suites_cache: dict[str, np.ndarray], suites: list[str],
                     heads: dict[int, torch.Tensor] | None, k: int = 100
                     ) -> dict[str, dict[str, float]]:
    """The product once the background deep pass has finished (the runtime's searcher over a
    store of the suite, ``mose_lsp.evaluate``'s search as shipped, without the lexical part)
    next to exact search with the deepest exit; MRR x 100."""
    result: dict[str, dict[str, float]] = {}
    for res in _evaluate_cached(suites_cache, suites, heads, k, (1,)):
        deep = max(res.exits, key=lambda e: e.exit)
        shipped = res.product.metrics.mrr if res.product is not None else deep.metrics.mrr
        result[res.suite] = {"deep_exact": round(100 * deep.metrics.mrr, 1),
                             "deep_hnsw": round(100 * shipped, 1)}
    return result


# ============================================================================================
# 3. building the checkpoint
# ============================================================================================


def build_checkpoint(heads: dict[int, torch.Tensor], out: str, base: str = "all-minilm-l6-v2",
                     metadata: dict | None = None, model=None) -> Path:
    """Save ``heads`` on ``model`` (default: the base model with these exits) as a checkpoint."""
    from ..checkpoint import save_checkpoint
    from ..hf_adapter import HFMultiExitEncoder, base_model_path

    exits = tuple(sorted(heads))
    dim = next(iter(heads.values())).shape[0]
    if model is None:
        model = HFMultiExitEncoder.from_base_model(base, exit_layers=exits, projection=dim)
    with torch.no_grad():
        for e, w in heads.items():
            model.heads[str(e)].proj.weight.copy_(w)
            model.heads[str(e)].proj.bias.zero_()
    folder = base_model_path(base)
    return save_checkpoint(model, out, tokenizer_file=folder / "tokenizer.json",
                           extra={"training": metadata} if metadata else None)


# ============================================================================================
# CLI
# ============================================================================================


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mose_training.recipes.exit_heads")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache-pairs")
    c.add_argument("--model", required=True)
    c.add_argument("--pairs", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--groups", type=int, default=6000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--query-max-tokens", type=int, default=48)
    c.add_argument("--code-max-tokens", type=int, default=160)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--offset", type=int, default=0, help="skip the first N sampled groups")
    c.add_argument("--config", help="take seed, groups and token limits from this config")
    s = sub.add_parser("cache-suites")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("suites", nargs="+")
    b = sub.add_parser("ablate", help="fit several loss variants, same steps, score each")
    b.add_argument("--cache", required=True, nargs="+")
    b.add_argument("--config", required=True)
    b.add_argument("--suites-cache", required=True)
    b.add_argument("--suites", nargs="+", required=True)
    b.add_argument("--variants", required=True, help="JSON {name: {field: value}}")
    b.add_argument("--json", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--cache", required=True, nargs="+")
    f.add_argument("--config", required=True, help="YAML/JSON of HeadFitConfig fields")
    f.add_argument("--suites-cache")
    f.add_argument("--suites", nargs="*", default=[])
    f.add_argument("--out", help="checkpoint folder to write")
    f.add_argument("--set", action="append", default=[], help="heads field=value (YAML value)")
    a = p.parse_args(argv)
    if a.cmd == "cache-pairs":
        if a.config:
            full = load_heads_config(a.config)
            a.seed, a.groups = full.seed, full.data.groups
            a.query_max_tokens = full.data.query_max_tokens
            a.code_max_tokens = full.data.code_max_tokens
        cache_pairs(a.model, a.pairs, a.out, a.groups, a.seed, a.query_max_tokens,
                    a.code_max_tokens, a.threads, a.offset)
    elif a.cmd == "cache-suites":
        cache_suites(a.model, a.suites, a.out, a.threads)
    elif a.cmd == "ablate":
        base = asdict(load_heads_config(a.config).heads)
        cache = load_caches(a.cache)
        sc = dict(np.load(a.suites_cache))
        results = {"untrained": {"config": None, "dev_proxy": score_cached(sc, a.suites, None)}}
        print("untrained", json.dumps(results["untrained"]["dev_proxy"]), flush=True)
        for name, over in json.loads(a.variants).items():
            cfg = HeadFitConfig(**{**base, **over})
            t = time.time()
            heads = fit_heads(cache, cfg, log=lambda *_: None)
            results[name] = {"config": asdict(cfg), "seconds": round(time.time() - t, 1),
                             "dev_proxy": score_cached(sc, a.suites, heads)}
            print(name, json.dumps(results[name]["dev_proxy"]), flush=True)
            Path(a.json).write_text(json.dumps(results, indent=1))
    else:
        cfg = load_heads_config(a.config, [f"heads.{item}" for item in a.set]).heads
        cache = load_caches(a.cache)
        heads = fit_heads(cache, cfg)
        report: dict = {"config": asdict(cfg)}
        if a.suites_cache and a.suites:
            sc = dict(np.load(a.suites_cache))
            report["dev_proxy"] = score_cached(sc, a.suites, heads)
            report["deep_index"] = score_deep_index(sc, a.suites, heads)
            print(json.dumps({k: report[k] for k in ("dev_proxy", "deep_index")}), flush=True)
        if a.out:
            build_checkpoint(heads, a.out, metadata={"recipe": "exit_heads", **report})
            print(f"checkpoint {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``mose eval``: score retrieval suites with a model (per exit, two-stage pipeline, BM25).

The command only parses options and prints; the work is ``evaluate.evaluate``.

Extension point for training checkpoints: ``resolve_encoder(source)`` opens a model directory
itself and otherwise asks the entry-point group ``mose.encoders``. Each entry point names a
callable ``factory(source: str, threads: int | None) -> Encoder | None`` that returns an encoder
(``evaluate.Encoder``) for a source it recognises, or None. ``mose_training`` registers one for
its checkpoints, so the runtime never imports torch.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from .errors import MoseError
from .evaluate import (
    DEFAULT_CANDIDATE_KS,
    DEFAULT_RECALL_KS,
    Encoder,
    PipelineSpec,
    Suite,
    SuiteResult,
    evaluate,
    format_table,
    load_suites,
    results_to_json,
)
from .model_dir import MANIFEST

ENCODER_PLUGIN_GROUP = "mose.encoders"


def resolve_encoder(source: str | Path | None, threads: int | None = None) -> Encoder:
    """The encoder for ``source``: None -> the embedded default model; a model directory ->
    the ONNX ``ModelEncoder``; anything else -> the first ``mose.encoders`` plugin that
    recognises it (for example a training checkpoint)."""
    from .encoder import ModelEncoder

    if source is None:
        return ModelEncoder.open(None, threads=threads)
    path = Path(source).expanduser()
    if (path / MANIFEST).is_file():
        return ModelEncoder.open(path, threads=threads)
    unavailable: list[str] = []
    for ep in entry_points(group=ENCODER_PLUGIN_GROUP):
        try:
            factory = ep.load()
        except ImportError as err:  # the plugin's optional dependencies are absent
            unavailable.append(f"{ep.name} ({err})")
            continue
        encoder = factory(str(source), threads)
        if encoder is not None:
            return encoder
    if not path.exists():
        raise MoseError(f"{source} does not exist: pass --model a model directory written by "
                        f"'mose export' (or a training checkpoint with the 'train' extra).")
    hint = (f" Encoder plugins that could not load: {', '.join(unavailable)}."
            if unavailable else "")
    raise MoseError(
        f"{source} is not a model directory (it has no {MANIFEST}) and no installed encoder "
        f"plugin recognises it.{hint} To score a training checkpoint, install the optional "
        f"part from a clone of the mose repository (in its folder): "
        f"pip install torch==2.13.0 && pip install '.[train]'")


def _parse_ints(value: str | None, option: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}",
                                 param_hint=option) from None
    if not numbers or min(numbers) < 1:
        raise typer.BadParameter(f"expected positive integers, got {value!r}", param_hint=option)
    return numbers


def _pipeline_exits(encoder: Encoder, override: tuple[int, ...] | None) -> tuple[int, int] | None:
    if override is not None:
        if len(override) != 2:
            raise typer.BadParameter("expected SHALLOW,DEEP", param_hint="--pipeline-exits")
        return override[0], override[1]
    # Model directories say which exit indexes and which re-ranks; other encoders may too.
    shallow = getattr(encoder, "index_exit", None)
    deep = getattr(encoder, "rerank_exit", None)
    if not isinstance(shallow, int) or not isinstance(deep, int):
        shallow, deep = min(encoder.exits), max(encoder.exits)
    return None if shallow == deep else (shallow, deep)


def eval_command(
    suites: Annotated[list[Path], typer.Argument(
        help="Suite folders (corpus.jsonl + queries.jsonl), or folders of suite folders.",
        show_default=False)],
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Model directory (or a checkpoint, through an encoder plugin). "
             "Default: the embedded model.")] = None,
    exits: Annotated[str | None, typer.Option(
        help="Comma-separated exit layers to score, e.g. 2,6. Default: every exit.")] = None,
    pipeline: Annotated[bool, typer.Option(
        "--pipeline/--no-pipeline",
        help="Also score the search as the product runs it: before the deep pass (shallow "
             "top-K re-ranked by the deep exit) and after it (HNSW over deep vectors).")] = True,
    pipeline_exits: Annotated[str | None, typer.Option(
        help="SHALLOW,DEEP exits of the pipeline. Default: the model's index and rerank "
             "exits.")] = None,
    k: Annotated[int, typer.Option(
        "--k", min=1, help="Candidates the shallow exit passes on (the searcher re-ranks "
                           "up to 16 fresh candidates per query).")] = 16,
    recall_at: Annotated[str, typer.Option(
        help="Comma-separated K for Recall@K.")] = ",".join(map(str, DEFAULT_RECALL_KS)),
    lexical_weight: Annotated[float, typer.Option(
        "--lexical-weight", min=0.0, max=1.0,
        help="BM25 weight the search as shipped fuses with the deep cosine (the runtime's "
             "lexicalWeight setting); 0: the deep exit alone.")] = 0.1,
    bm25: Annotated[bool, typer.Option("--bm25", help="Add the BM25 baseline.")] = False,
    bm25_only: Annotated[bool, typer.Option(
        "--bm25-only", help="Score the BM25 baseline alone (no model needed).")] = False,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file ('-': JSON on stdout, "
                       "table on stderr).")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, help="Score only the first N queries of each suite.")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="onnxruntime threads. Default: min(4, cores).")] = None,
) -> None:
    """Score retrieval suites: MRR, Recall@K, NDCG@10 and encode cost per exit."""
    exit_list = _parse_ints(exits, "--exits")
    recall_ks = _parse_ints(recall_at, "--recall-at") or DEFAULT_RECALL_KS
    override = _parse_ints(pipeline_exits, "--pipeline-exits")
    loaded: list[Suite] = []
    for path in suites:
        loaded.extend(s.limit(limit) for s in load_suites(path))
    encoder = None if bm25_only else resolve_encoder(model, threads)
    spec = None
    if encoder is not None and pipeline:
        pair = _pipeline_exits(encoder, override)
        if pair is not None:
            spec = PipelineSpec(pair[0], pair[1], k, DEFAULT_CANDIDATE_KS)

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    results: list[SuiteResult] = [
        evaluate(encoder, suite, exits=exit_list, pipeline=spec, bm25=bm25 or bm25_only,
                 recall_ks=recall_ks, progress=progress, lexical_weight=lexical_weight)
        for suite in loaded
    ]
    payload = results_to_json(results)
    table = format_table(results)
    if json_path is not None and str(json_path) == "-":
        typer.echo(table, err=True)
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(table)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise MoseError(f"cannot write {json_path}: {err}") from err
        typer.echo(f"wrote {json_path}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the ``mose`` command (called by the CLI owner)."""
    app.command("eval", help=eval_command.__doc__)(eval_command)


__all__ = ["ENCODER_PLUGIN_GROUP", "eval_command", "register", "resolve_encoder"]

if __name__ == "__main__":  # python -m mose_lsp.eval_cli SUITE ... (for development)
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _app.command()(eval_command)
    try:
        _app()
    except MoseError as _err:
        typer.echo(f"error: {_err}", err=True)
        sys.exit(1)

"""``mose export``: a checkpoint -> a model directory the runtime can load.

This module joins the ``mose`` command through the ``mose.cli`` entry point. It imports
without torch: torch and the exporter are imported inside the command, and a missing torch
becomes a ``MissingExtraError`` message.

The sub-app has a single command, registered as the app's callback so that it runs as
``mose export SOURCE ...`` (a typer sub-app with one ``@app.command()`` would need
``mose export export``). A click group stops parsing its own options at the first positional
argument (leaving the rest to a subcommand); ``_SingleCommandGroup`` lets options follow
SOURCE and drops ``COMMAND [ARGS]...`` from the usage line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from mose_lsp.errors import MissingExtraError, MoseError


class _SingleCommandGroup(TyperGroup):
    """A typer group whose callback is the whole command: options may come after arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.allow_interspersed_args = True

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [p for p in super().collect_usage_pieces(ctx) if p != self.subcommand_metavar]


app = typer.Typer(
    name="export",
    cls=_SingleCommandGroup,
    help="Export a multi-exit checkpoint to a model directory (one ONNX file per exit).",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def parse_exits(value: str | None) -> tuple[int, ...] | None:
    """``"2,6"`` -> (2, 6); None or "" -> None (the model's own exits)."""
    if not value:
        return None
    try:
        exits = tuple(int(part) for part in value.replace(" ", "").split(",") if part)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of layers, e.g. 2,6")
    if not exits or any(e <= 0 for e in exits):
        raise typer.BadParameter(f"{value!r}: layers are positive integers, e.g. 2,6")
    return exits


@app.callback(invoke_without_command=True, no_args_is_help=True)
def export(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE",
        help="A mose checkpoint folder, a released ModularStarEncoder folder, or the base "
             "model name 'all-minilm-l6-v2' (its exits untrained).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Model directory to write (must be empty unless --force).")],
    exits: Annotated[str | None, typer.Option(
        "--exits", help="Comma-separated exit layers to export, e.g. 2,6 (default: all the "
                        "model's exits; 2,6 for a base model).")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8/--no-int8", help="Quantise to int8 (dynamic, per channel).")] = True,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, help="Longest input, in tokens (default: the model's).")] = None,
    index_exit: Annotated[int | None, typer.Option(
        "--index-exit", help="Exit that embeds every chunk (default: the shallowest).")] = None,
    rerank_exit: Annotated[int | None, typer.Option(
        "--rerank-exit", help="Exit that re-ranks candidates (default: the deepest).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a non-empty --out.")] = False,
    name: Annotated[str | None, typer.Option(
        "--name", help="Model name in the manifest (default: the model's).")] = None,
    model_version: Annotated[str, typer.Option(
        "--model-version", help="Model version in the manifest.")] = "1",
    measure_cost: Annotated[bool, typer.Option(
        "--measure-cost", help="Measure each exit's relative encode cost (default: computed "
                               "from its layer count).")] = False,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="Pairs JSONL whose seeded sample (128 texts) calibrates the int8 "
                              "smoothing (default: the parity inputs).")] = None,
) -> None:
    """Export SOURCE to --out: ONNX files cut at each exit, tokenizer, manifest; parity checked."""
    try:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            raise MissingExtraError("'mose export'", "train", "torch") from err
        from .exporter import calibration_samples, export_model

        result = export_model(
            source, out, parse_exits(exits), int8=int8, max_tokens=max_tokens,
            index_exit=index_exit, rerank_exit=rerank_exit, force=force, name=name,
            model_version=model_version, measure_cost=measure_cost,
            calibration=calibration_samples(calibration) if calibration else None,
            log=lambda msg: typer.echo(msg, err=True))
    except MoseError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    m = result.manifest
    typer.echo(result.parity.to_markdown())
    typer.echo(f"\nwrote {result.path}: exits {[e.layer for e in m.exits]}, index exit "
               f"{m.index_exit}, rerank exit {m.rerank_exit}")

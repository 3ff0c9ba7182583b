"""``mose train``: run the training recipes from a YAML config plus ``--set`` overrides.

Joins the ``mose`` command through the ``mose.cli`` entry point (``train``). This module imports
no torch: each command imports its recipe (and torch) when it runs, and says which extra to
install when torch is absent. Under ``torchrun`` run it as a module::

    torchrun --nproc_per_node 8 -m mose_training.cli finetune CONFIG --set train.batch_size=32
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mose_lsp.errors import MissingExtraError, MoseError

app = typer.Typer(
    name="train",
    help="Pretrain or fine-tune a multi-exit encoder (needs the 'train' extra).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RECIPES = ("pretrain", "finetune")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see training/configs/).",
                                           exists=True, dir_okay=False, readable=True)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field: --set train.max_steps=100 (value parsed as YAML; "
                  "repeatable).")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", help="Resume from a step checkpoint folder, or a run folder (its newest "
                     "checkpoint).")]


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise MissingExtraError("mose train", "train", "torch") from err


def _recipe_module(name: str):
    _require_torch()
    if name == "pretrain":
        from .recipes import pretrain as module
    else:
        from .recipes import finetune as module
    return module


def _config_class(name: str):
    module = _recipe_module(name)
    return module.PretrainConfig if name == "pretrain" else module.FinetuneConfig


def _run(name: str, config: Path, overrides: list[str] | None, resume: Path | None) -> None:
    try:
        module = _recipe_module(name)  # checks torch first

        from .recipes.common import load_config

        cfg = load_config(_config_class(name), config, overrides or [])
        recipe = module.run(cfg, resume_from=resume)
    except MoseError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if recipe.dist.is_main:
        logged = recipe.metrics.records  # logged records hold the loss averaged over ranks
        last = next((r for r in reversed(logged) if "loss" in r), {})
        typer.echo(f"{name}: {recipe.step} steps, last loss {last.get('loss', float('nan')):.4f}; "
                   f"model in {Path(cfg.output_dir) / 'final'}")


@app.command()
def pretrain(config: ConfigArg, set_: SetOpt = None, resume: ResumeOpt = None) -> None:
    """MoSE pretraining: MLM + in-context classification at every exit."""
    _run("pretrain", config, set_, resume)


@app.command()
def finetune(config: ConfigArg, set_: SetOpt = None, resume: ResumeOpt = None) -> None:
    """Retrieval fine-tuning: symmetric InfoNCE at every exit (+ optional distillation)."""
    _run("finetune", config, set_, resume)


@app.command("show-config")
def show_config(
    recipe: Annotated[str, typer.Argument(help="pretrain or finetune")],
    config: Annotated[Path | None, typer.Argument(help="YAML config; none: the defaults",
                                                     exists=True, dir_okay=False)] = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config (defaults + file + overrides) as YAML, after validation."""
    if recipe not in RECIPES:
        typer.echo(f"error: recipe must be one of {', '.join(RECIPES)}, got {recipe!r}", err=True)
        raise typer.Exit(1)
    try:
        cls = _config_class(recipe)  # checks torch first
        import yaml

        from .recipes.common import config_to_dict, load_config

        cfg = load_config(cls, config, set_ or [])
    except MoseError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), nl=False)


def _add_data_commands() -> None:
    """``mose train data ...`` from training/data/cli.py, when that module exists."""
    try:
        from .data import cli as data_cli
    except ModuleNotFoundError as err:
        if err.name and err.name.endswith("data.cli"):
            return
        raise
    register = getattr(data_cli, "register", None)
    if register is not None:
        register(app)


_add_data_commands()

if __name__ == "__main__":  # python -m mose_training.cli (torchrun -m mose_training.cli)
    app()

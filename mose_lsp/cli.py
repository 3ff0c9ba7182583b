"""The ``mose`` command.

Runtime commands live here; the optional parts (``mose export``, ``mose train``) join as
typer sub-apps through the ``mose.cli`` entry-point group, so this module never imports them
(or torch). Their modules import torch only inside command bodies; if a plugin cannot load at
all, a placeholder explains which extra to install.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Annotated

import typer

from . import __version__
from .errors import MoseError

app = typer.Typer(
    name="mose",
    help="Local semantic code search on a multi-exit code encoder (MoSE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PLUGIN_GROUP = "mose.cli"
PLUGIN_EXTRA = {"export": "train", "train": "train"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mose {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Local semantic code search on a multi-exit code encoder (MoSE)."""


def _missing_plugin(name: str, error: Exception) -> typer.Typer:
    extra = PLUGIN_EXTRA.get(name, "train")
    sub = typer.Typer(help=f"(unavailable: install the '{extra}' extra)")

    @sub.callback(invoke_without_command=True)
    def _explain() -> None:
        typer.echo(
            f"error: 'mose {name}' is unavailable ({error}). Install the optional part with:\n"
            f"  pip install torch==2.13.0 && pip install 'mose[{extra}]'",
            err=True,
        )
        raise typer.Exit(1)

    return sub


def _add_plugins() -> None:
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            sub = ep.load()
        except ImportError as err:  # the optional part or one of its light deps is absent
            sub = _missing_plugin(ep.name, err)
        app.add_typer(sub, name=ep.name)


def _register_runtime_commands() -> None:
    # Imported here so that `mose --version` stays instant.
    from . import commands  # noqa: F401  (registers commands on `app`)


def main(argv: list[str] | None = None) -> None:
    _register_runtime_commands()
    _add_plugins()
    try:
        app(args=argv, prog_name="mose", standalone_mode=True)
    except MoseError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # python -m mose_lsp.cli
    main()

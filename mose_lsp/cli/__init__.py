"""The ``mose`` command.

One module per command group (``indexing``: index; ``search``: search, similar; ``status``;
``eval_cli`` and ``serve_cli`` beside this package), each exposing ``register(app)``; this
module builds the app and registers them explicitly, so nothing imports this package back.
The optional parts (``mose export``, ``mose train``) join as typer sub-apps through the
``mose.cli`` entry-point group, so the runtime never imports them (or torch); if a plugin
cannot load, a placeholder says which extra to install.

The output contract (exit codes, JSON errors, 1-based lines) is in :mod:`.output` and
docs/cli.md; the workspace rule in :mod:`.workspace`.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from .. import __version__
from ..errors import MoseError
from .coercion import install as plain_option_values
from .output import EXIT_INTERRUPTED, EXIT_USAGE, report_error
from .workspace import RULE

app = typer.Typer(
    name="mose",
    help="Local semantic code search on a multi-exit code encoder (MoSE).",
    epilog=f"Workspace: {RULE} Exit codes: 0 ok (results or none), 1 error, 2 usage, "
           f"130 interrupted; --json prints errors as JSON too (docs/cli.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PLUGIN_GROUP = "mose.cli"
PLUGIN_EXTRA = {"export": "train", "train": "train"}
JSON_COMMANDS = ("index", "search", "similar", "status")  # --json is a flag there
# Commands that run once and end: they close their index before printing their answer.
ONE_SHOT = JSON_COMMANDS


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
    from ..errors import MissingExtraError

    extra = PLUGIN_EXTRA.get(name, "train")
    sub = typer.Typer(help=f"(unavailable: install the '{extra}' extra)")

    @sub.callback(invoke_without_command=True)
    def _explain() -> None:
        raise MissingExtraError(f"'mose {name}'", extra, str(error))

    return sub


def _add_plugins() -> None:
    from importlib.metadata import entry_points  # (tens of ms: only when plugins are listed)

    known = {g.name for g in app.registered_groups}
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in known:
            continue
        try:
            sub = ep.load()
        except ImportError as err:  # the optional part or one of its light deps is absent
            sub = _missing_plugin(ep.name, err)
        app.add_typer(sub, name=ep.name)


# Which module registers each runtime command (``register(app)``).
RUNTIME_COMMANDS = {
    "index": "mose_lsp.cli.indexing", "search": "mose_lsp.cli.search",
    "similar": "mose_lsp.cli.search", "status": "mose_lsp.cli.status",
    "eval": "mose_lsp.eval_cli", "serve": "mose_lsp.serve_cli", "mcp": "mose_lsp.mcp.cli",
}


def _register_runtime_commands(only: str | None = None) -> None:
    """Add the runtime commands (idempotent): all of them, or only the module of ``only``
    (a one-shot ``mose search`` then imports nothing it does not run: ``eval`` alone costs
    the evaluation code's imports). Each command imports the engine when it runs."""
    from importlib import import_module

    have = {c.name for c in app.registered_commands}
    modules = [RUNTIME_COMMANDS[only]] if only in RUNTIME_COMMANDS else RUNTIME_COMMANDS.values()
    for name in dict.fromkeys(modules):
        commands = [c for c, m in RUNTIME_COMMANDS.items() if m == name]
        if not all(c in have for c in commands):
            try:
                module = import_module(name)
            except ModuleNotFoundError as err:
                if err.name is not None and name.startswith(err.name):
                    continue  # a front end this build does not carry
                raise
            module.register(app)
            have.update(commands)


def _wants_json(argv: list[str]) -> bool:
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in JSON_COMMANDS and "--json" in argv


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of the click that typer runs on: recent typer versions carry
    their own copy (``typer._click``; click itself is then not imported), older ones use
    click itself."""
    from importlib import import_module

    usage: list[type] = []
    aborts: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = import_module(name)
        except ImportError:
            continue
        usage.append(module.UsageError)
        if isinstance(getattr(module, "Abort", None), type):
            aborts.append(module.Abort)
        break
    return tuple(usage), tuple(aborts)


def main(argv: list[str] | None = None) -> None:
    """The console script (``argv`` None: the process's own arguments, and the process ends
    here) or a call with explicit arguments (which raises ``SystemExit`` like any typer app)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # nothing else to load
        typer.echo(f"mose {__version__}")
        return
    command = next((a for a in args if not a.startswith("-")), None)
    helping = not args or any(a in ("--help", "-h") for a in args) and command is None
    if command in RUNTIME_COMMANDS and not helping:
        _register_runtime_commands(only=command)
    else:  # the full list (help, a plugin's command, a typo)
        _register_runtime_commands()
        _add_plugins()
    as_json = _wants_json(args)
    end = _end_process if argv is None and command in ONE_SHOT else sys.exit
    usage_errors, aborts = _click_errors()
    plain_option_values()  # no pydantic for the options' values (tens of ms a call)
    try:
        code = app(args=args, prog_name="mose", standalone_mode=False)
    except usage_errors as err:
        if as_json:
            report_error(_UsageMessage(err), True, code="usage")
        else:
            err.show()
        end(EXIT_USAGE)
    except (*aborts, KeyboardInterrupt):
        report_error(MoseError("interrupted"), as_json, code="interrupted")
        end(EXIT_INTERRUPTED)
    except MoseError as err:
        report_error(err, as_json)
        end(getattr(err, "exit_code", 1))
    end(code if isinstance(code, int) else 0)


def _end_process(code: int) -> NoReturn:
    """End a one-shot command's process now. Its index is closed and its answer printed:
    nothing is left to save, and the interpreter's teardown of every module and native
    library (onnxruntime, numpy, hnswlib) would add tens of milliseconds to each call."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


class _UsageMessage(Exception):
    def __init__(self, err) -> None:
        command = err.ctx.command_path if getattr(err, "ctx", None) else "mose"
        super().__init__(f"{err.format_message()} (see '{command} --help')")


if __name__ == "__main__":  # python -m mose_lsp.cli
    main()

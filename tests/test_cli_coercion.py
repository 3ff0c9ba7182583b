"""The CLI's plain conversion of option values: same values and errors as typer's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from mose_lsp.cli.coercion import install


def _app(seen: dict) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def run(
        text: Annotated[str, typer.Argument()],
        k: Annotated[int, typer.Option("-k", min=1)] = 10,
        flag: Annotated[bool, typer.Option("--flag")] = False,
        lang: Annotated[list[str] | None, typer.Option("--lang")] = None,
        where: Annotated[Path | None, typer.Option("--where")] = None,
    ) -> None:
        seen.update(text=text, k=k, flag=flag, lang=lang, where=where)

    return app


@pytest.mark.parametrize("argv", [
    ["words"], ["words", "-k", "3", "--flag", "--lang", "python", "--lang", "go",
                "--where", "some/dir"], ["words", "-k", " 7 "],
])
def test_plain_values_convert_as_typer_converts_them(argv: list[str], monkeypatch) -> None:
    from typer.core import _TyperParameter

    current = _TyperParameter.get_runtime_param
    with monkeypatch.context() as typer_only:  # typer's own conversion, even if installed
        typer_only.setattr(_TyperParameter, "get_runtime_param",
                           getattr(current, "__wrapped__", current))
        typer_seen: dict = {}
        result = CliRunner().invoke(_app(typer_seen), argv)
    assert result.exit_code == 0, result.output
    install()
    plain_seen: dict = {}
    result = CliRunner().invoke(_app(plain_seen), argv)
    assert result.exit_code == 0, result.output
    assert plain_seen == typer_seen
    assert {k: type(v) for k, v in plain_seen.items()} == {
        k: type(v) for k, v in typer_seen.items()}


@pytest.mark.parametrize("argv", [["w", "-k", "abc"], ["w", "-k", "0"], ["w", "-k", "1.5"]])
def test_bad_values_get_typers_own_error(argv: list[str]) -> None:
    install()
    result = CliRunner().invoke(_app({}), argv)
    assert result.exit_code == 2
    assert "Invalid value for '-k'" in result.output


def test_a_one_shot_command_does_not_import_pydantic(tmp_path: Path) -> None:
    code = ("import sys\nfrom mose_lsp.cli import main\n"
            "try:\n    main(['status', '-w', sys.argv[1], '--json'])\n"
            "except SystemExit:\n    pass\n"
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr

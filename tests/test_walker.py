import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mose_lsp.config import Settings
from mose_lsp.walker import IgnoreRules, iter_files, relative_path


def _write(root: Path, rel: str, text: str = "x = 1\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _files(root: Path, settings: Settings | None = None) -> list[str]:
    return sorted(e.rel for e in iter_files(root, settings or Settings()))


def test_gitignore_moseignore_nested_and_negation(tmp_path):
    _write(tmp_path, ".gitignore", "*.log\nbuild_out/\n!keep.log\n")
    _write(tmp_path, "src/.gitignore", "generated_*.py\n")
    _write(tmp_path, ".moseignore", "docs/\n")
    for rel in ["a.py", "x.log", "keep.log", "build_out/b.py", "src/c.py", "src/generated_d.py",
                "other/generated_d.py", "docs/e.md"]:
        _write(tmp_path, rel)
    assert _files(tmp_path) == [".gitignore", ".moseignore", "a.py", "keep.log",
                                "other/generated_d.py", "src/.gitignore", "src/c.py"]


NESTED = {  # ignore files with negations at several depths, and the files they judge
    ".gitignore": "out/\n!out/keep.txt\n*.log\ngen/\n*.tmp\n!/top.tmp\n",
    "logs/.gitignore": "!important.log\n",
    "logs/keep/.gitignore": "!*.log\nsecondary.log\n",
    "logs/keep/deeper/.gitignore": "!secondary.log\n",
    "src/gen/.gitignore": "!z.py\n",  # inside an excluded folder: never read
    "src/.gitignore": "*.py\n!main.py\nlib/\n!lib/\n",
    "src/lib/.gitignore": "*.py\n!*_keep.py\n",
}
NESTED_FILES = [
    "out/keep.txt", "out/a.py", "logs/x.log", "logs/important.log", "logs/keep/y.log",
    "logs/keep/secondary.log", "logs/keep/deeper/secondary.log", "logs/keep/deeper/z.log",
    "src/gen/z.py", "src/gen/deep/w.py", "src/main.py", "src/util.py", "src/lib/a.py",
    "src/lib/b_keep.py", "src/lib/notes.md", "top.tmp", "docs/top.tmp", "docs/a.md",
]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_nested_negations_decide_as_git_does(tmp_path):
    """A deeper ``!negation`` overrides a parent's rule, a path in an excluded folder stays
    excluded: the walk and each single-path verdict agree with git itself."""
    for rel, text in NESTED.items():
        _write(tmp_path, rel, text)
    for rel in NESTED_FILES:
        _write(tmp_path, rel)
    git = ["git", "-c", "core.excludesFile=/dev/null", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q", "."], check=True)
    listed = subprocess.run([*git, "ls-files", "--others", "--exclude-standard"], check=True,
                            capture_output=True, text=True).stdout.split()
    assert _files(tmp_path) == sorted(listed)
    # check-ignore exits 1 when nothing is ignored; its output lists the ignored paths
    ignored_by_git = set(subprocess.run(
        [*git, "check-ignore", "--stdin"], input="\n".join(NESTED_FILES), check=False,
        capture_output=True, text=True).stdout.split())
    assert "logs/keep/deeper/secondary.log" not in ignored_by_git  # the fixture bites
    assert {"out/keep.txt", "src/gen/z.py", "logs/keep/secondary.log"} <= ignored_by_git
    rules = IgnoreRules(tmp_path.resolve(), Settings())
    assert {rel for rel in NESTED_FILES if rules.ignored(rel, False)} == ignored_by_git
    fresh = IgnoreRules(tmp_path.resolve(), Settings())  # no folder decided by a walk first
    assert fresh.ignored("src/gen/z.py", False) and not fresh.ignored("src/lib/b_keep.py", False)


def test_gitignore_can_be_disabled_but_moseignore_stays(tmp_path):
    _write(tmp_path, ".gitignore", "*.py\n")
    _write(tmp_path, ".moseignore", "b.py\n")
    _write(tmp_path, "a.py")
    _write(tmp_path, "b.py")
    assert "a.py" not in _files(tmp_path)
    files = _files(tmp_path, Settings(use_gitignore=False))
    assert "a.py" in files and "b.py" not in files


def test_default_excludes_and_secrets(tmp_path):
    for rel in [".git/config", "node_modules/x/index.js", ".venv/lib/site.py", ".env",
                ".env.production", "deploy/server.pem", "id_rsa", "keys/app.key",
                "src/main.py", "credentials.json", ".aws/config"]:
        _write(tmp_path, rel)
    assert _files(tmp_path) == ["src/main.py"]


def test_secret_patterns_configurable(tmp_path):
    _write(tmp_path, ".env")
    _write(tmp_path, "notes.secret")
    settings, warnings = Settings.from_dict({"secretPatterns": ["*.secret"]})
    assert warnings == []
    assert _files(tmp_path, settings) == [".env"]


def test_symlinks_not_followed_outside_or_into_loops(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    _write(ws, "real.py")
    _write(outside, "secret.py")
    os.symlink(outside / "secret.py", ws / "escape.py")
    os.symlink(outside, ws / "linked_dir")
    os.symlink(ws / "real.py", ws / "alias.py")
    os.symlink(ws / "loop", ws / "loop")
    assert _files(ws) == ["alias.py", "real.py"]


def test_relative_path(tmp_path):
    assert relative_path(tmp_path, tmp_path / "a" / "b.py") == "a/b.py"
    assert relative_path(tmp_path / "a", tmp_path / "c.py") is None

import os
from pathlib import Path

from mose_lsp.config import Settings
from mose_lsp.walker import iter_files, relative_path


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

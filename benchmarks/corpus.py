"""Fetch real third-party code for the benchmarks (pinned versions), into .bench/.

    python benchmarks/corpus.py [--dest .bench/workspace]

Python: source distributions from PyPI (pip download --no-binary); TypeScript: npm packages
(npm pack) whose tarballs carry their .ts sources; Go: Debian's golang-*-dev packages
(apt-get download + dpkg -x). Only source files of each language are kept (no compiled
JavaScript, no .d.ts), so the workspace is code people write. Prints line counts per language.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PYTHON = ["flask==3.1.0", "requests==2.32.3", "click==8.1.8", "rich==13.9.4"]
NPM = ["zod@3.24.1", "rxjs@7.8.1"]
DEBIAN = ["golang-github-dgraph-io-badger-dev", "golang-github-spf13-cobra-dev"]
KEEP = {"python": (".py",), "typescript": (".ts",), "go": (".go",)}


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _keep(src: Path, dest: Path, suffixes: tuple[str, ...]) -> None:
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in suffixes and not path.name.endswith(".d.ts"):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def fetch(dest: Path) -> dict[str, int]:
    if dest.exists() and (dest / "SOURCES.json").is_file():
        return json.loads((dest / "SOURCES.json").read_text())["lines"]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "py").mkdir()
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              "-d", str(tmp / "py"), *PYTHON], tmp)
        for sdist in (tmp / "py").glob("*.tar.gz"):
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp / "py-x", filter="data")
        _keep(tmp / "py-x", dest / "python", KEEP["python"])
        (tmp / "js").mkdir()
        _run(["npm", "pack", "--silent", *NPM], tmp / "js")
        for tgz in (tmp / "js").glob("*.tgz"):
            with tarfile.open(tgz) as tar:
                tar.extractall(tmp / "js-x" / tgz.stem, filter="data")
        _keep(tmp / "js-x", dest / "typescript", KEEP["typescript"])
        (tmp / "deb").mkdir()
        _run(["apt-get", "download", *DEBIAN], tmp / "deb")
        for deb in (tmp / "deb").glob("*.deb"):
            (tmp / "deb-x" / deb.stem).mkdir(parents=True)
            _run(["dpkg", "-x", str(deb), str(tmp / "deb-x" / deb.stem)], tmp)
        _keep(tmp / "deb-x", dest / "go", KEEP["go"])
    lines = {}
    for lang in KEEP:
        lines[lang] = sum(len(p.read_bytes().splitlines()) for p in (dest / lang).rglob("*")
                          if p.is_file())
    (dest / "SOURCES.json").write_text(json.dumps(
        {"python": PYTHON, "npm": NPM, "debian": DEBIAN, "lines": lines}, indent=2))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".bench/workspace"))
    args = parser.parse_args()
    lines = fetch(args.dest)
    print(json.dumps({"dest": str(args.dest), "lines": lines, "total": sum(lines.values())}))


if __name__ == "__main__":
    main()

"""Pinned training data (training/data/pinned.py): the default model's data manifest resolves,
and mining a small pinned subset gives the pairs the manifest records, byte for byte."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from mose_training.data import DataError
from mose_training.data.pinned import (
    PinnedWheel,
    RegistryUnreachable,
    check_mining,
    fetch_wheel,
    load_data_manifest,
    mine_pinned,
    pip_download_args,
    record_mining,
    resolve_pins,
    unpack_wheel,
    wheel_source,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "training" / "configs" / "default-model-data.json"
#: Small distributions of the pinned corpus: two pure-Python wheels and one platform wheel.
SUBSET = ("cycler", "idna", "MarkupSafe")


def test_manifest_pins_every_source_with_a_hash():
    m = load_data_manifest(MANIFEST)
    assert m.stdlib is not None and re.fullmatch(r"\d+\.\d+\.\d+", m.stdlib.python)
    assert m.mined is not None and m.pairs is not None and m.pairs.records <= m.mined.records
    for d in m.distributions:
        assert d.file.endswith(".whl") and re.fullmatch(r"[0-9a-f]{64}", d.sha256), d
        assert d.pairs and re.fullmatch(r"[0-9a-f]{64}", d.pairs_sha256 or ""), d
    total = m.stdlib.pairs + sum(d.pairs for d in m.distributions)
    assert total == m.mined.records
    names = [d.name.lower() for d in m.distributions]
    assert names == sorted(names), "mining order is the manifest order: keep it sorted"


def test_pip_download_args_name_the_pinned_build():
    pin = PinnedWheel("regex", "1.0", "regex-1.0-cp311-cp311-manylinux2014_x86_64."
                      "manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl", "0" * 64)
    args = pip_download_args(pin, Path("/tmp/x"), "3.11.7")
    plats = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert plats[0] == "manylinux_2_28_x86_64" and set(plats) == {
        "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"}
    assert args[-1] == "regex==1.0" and "--python-version" in args and "3.11" in args
    pure = PinnedWheel("idna", "3", "idna-3-py3-none-any.whl", "0" * 64)
    assert "--platform" not in pip_download_args(pure, Path("/tmp/x"), "3.11.7")


def test_a_cached_file_with_another_hash_is_refused(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "idna-3-py3-none-any.whl").write_bytes(b"not the pinned file")
    pin = PinnedWheel("idna", "3", "idna-3-py3-none-any.whl", "0" * 64)
    with pytest.raises(DataError, match="not the pinned one"):
        fetch_wheel(pin, tmp_path)


def test_unpack_lays_a_wheel_out_as_installed(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    files = {"demo/__init__.py": "", "demo/core.py": "def f():\n    pass\n",
             "demo-1.0.data/purelib/extra.py": "x = 1\n",
             "demo-1.0.data/scripts/tool": "#!/bin/sh\n", "tests/test_demo.py": "",
             "demo-1.0.dist-info/METADATA": "Name: demo\n"}
    record = "".join(f"{name},,\n" for name in [*files, "demo-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("demo-1.0.dist-info/RECORD", record)
    root = unpack_wheel(wheel, tmp_path / "cache")
    assert (root / "extra.py").is_file() and (root / "demo" / "core.py").is_file()
    assert not any("scripts" in p.parts for p in root.rglob("*"))
    pin = PinnedWheel("demo", "1.0", wheel.name, "0" * 64)
    src = wheel_source(pin, wheel, tmp_path / "cache")
    assert src.files == ("demo/__init__.py", "demo/core.py", "extra.py")  # no tests, no scripts


def _fetch_or_skip(fn):
    try:
        return fn()
    except RegistryUnreachable as err:
        pytest.skip(f"the package index is unreachable: {err}")


def test_every_pin_resolves_to_its_file_and_hash():
    m = load_data_manifest(MANIFEST)
    found = _fetch_or_skip(lambda: resolve_pins(m))
    wrong = [(r.pin.file, r.file, r.sha256) for r in found if not r.ok]
    assert not wrong, f"the index offers other files for these pins: {wrong}"


def test_mining_a_pinned_subset_gives_the_recorded_pairs(tmp_path):
    m = load_data_manifest(MANIFEST)
    sub = m.subset(SUBSET)
    cache = tmp_path / "cache"
    result = _fetch_or_skip(lambda: mine_pinned(sub, cache, tmp_path / "pairs.jsonl"))
    assert [s.name for s in result.sources] == [d.name for d in sub.distributions]
    for s in result.sources:
        assert s.matches, (s.name, s.pairs, s.pairs_sha256, s.expected_pairs, s.expected_sha256)
    check_mining(sub, result)
    assert result.records == sum(d.pairs for d in sub.distributions)
    lines = (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(x)["source"]["name"] for x in lines} == set(SUBSET)

    # a source that mines differently is named
    changed = record_mining(sub, result)
    changed.distributions[0] = PinnedWheel(**{**changed.distributions[0].__dict__,
                                              "pairs_sha256": "f" * 64})
    again = mine_pinned(changed, cache, tmp_path / "again.jsonl")
    with pytest.raises(DataError, match=sub.distributions[0].name):
        check_mining(changed, again)


def test_cli_pairs_manifest_record_then_check(tmp_path):
    from mose_training.cli import app
    from typer.testing import CliRunner

    m = load_data_manifest(MANIFEST)
    sub = m.subset(["cycler"])
    path = sub.save(tmp_path / "data.json")
    cache = tmp_path / "cache"
    try:
        fetch_wheel(sub.distributions[0], cache)
    except RegistryUnreachable as err:
        pytest.skip(f"the package index is unreachable: {err}")
    runner = CliRunner()
    base = ["data", "pairs", "--manifest", str(path), "--cache", str(cache)]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a.jsonl"), "--record"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b.jsonl")])
    assert res.exit_code == 0 and "as the data manifest records" in res.output, res.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    data = json.loads(path.read_text())
    data["mined"]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "c.jsonl")])
    assert res.exit_code == 1 and "record" in res.output, res.output
    shutil.rmtree(cache)

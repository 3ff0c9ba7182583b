"""Pinned training data: a pair corpus named by exact artifacts, not by the installed environment.

A data manifest (JSON; the default model's is ``training/configs/default-model-data.json``) names
what the pairs are mined from:

- ``distributions``: wheels at pinned versions, each with its file name and sha256. They are
  fetched with ``pip download --no-deps --only-binary :all:`` into a cache folder (the platform
  and Python tags of the pinned file are passed to pip, so any machine fetches the same file),
  checked against the sha256, unpacked as an installer would lay them out, and mined file by
  file from their ``RECORD``: exactly what mining an environment with them installed reads.
  Wheels rather than source distributions: a wheel is the code that runs (an sdist adds tests,
  docs and build scripts, and getting its metadata runs its build backend), and some
  distributions publish no sdist at all.
- ``stdlib``: the standard library of one named Python version, read from the running
  interpreter only when its version is exactly that one (or from a folder given explicitly).
  CPython's sources are not on a package registry; the recorded pair hash checks that the
  folder mined holds the same code.

After mining, every source's pair count and the sha256 of its records are compared with the
manifest, then the sha256 of the whole pair file (before and after deduplication): a rerun
produces the same bytes, and a difference names the source that moved. ``record=True`` writes
the measured values into the manifest instead (used once, when the pins change).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import DataError
from .pairs import (
    STDLIB_EXCLUDE,
    MiningConfig,
    MiningStats,
    Source,
    code_files,
    mine_source,
)

Log = Callable[[str], None]

#: Messages in pip's output that mean the package index could not be reached at all.
UNREACHABLE_MARKERS = ("NewConnectionError", "Max retries exceeded", "Network is unreachable",
                       "Temporary failure in name resolution", "Name or service not known",
                       "Connection refused", "ConnectTimeoutError", "ReadTimeoutError",
                       "No route to host")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class PinnedWheel:
    """One distribution: the exact wheel file, and what mining it gave when it was pinned."""

    name: str
    version: str
    file: str  # wheel file name (its tags say which platform and Python it is for)
    sha256: str
    pairs: int | None = None  # pairs mined from it
    pairs_sha256: str | None = None  # sha256 of those JSONL records, in order

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def tags(self) -> tuple[list[str], list[str], list[str]]:
        """(python tags, abi tags, platform tags) of the wheel file name."""
        parts = self.file[: -len(".whl")].split("-")
        if not self.file.endswith(".whl") or len(parts) < 5:
            raise DataError(f"{self.file!r} is not a wheel file name (name-version-py-abi-"
                            f"platform.whl)")
        return parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")


@dataclass(frozen=True)
class StdlibPin:
    python: str  # exact version, e.g. "3.11.7"
    pairs: int | None = None
    pairs_sha256: str | None = None


@dataclass(frozen=True)
class FileHash:
    records: int
    sha256: str


@dataclass
class DataManifest:
    """A parsed data manifest (see the module docstring)."""

    path: Path | None
    distributions: list[PinnedWheel]
    stdlib: StdlibPin | None = None
    mining: dict[str, Any] = field(default_factory=dict)  # MiningConfig fields
    dedup: dict[str, Any] = field(default_factory=dict)  # threshold, num_perm
    mined: FileHash | None = None  # the mined pair file
    pairs: FileHash | None = None  # the deduplicated, decontaminated pair file
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, kept as they are

    def mining_config(self) -> MiningConfig:
        cfg = dict(self.mining)
        if cfg.get("languages") is not None:
            cfg["languages"] = frozenset(cfg["languages"])
        if "variants" in cfg:
            cfg["variants"] = tuple(cfg["variants"])
        try:
            return MiningConfig(**cfg)
        except TypeError as err:
            raise DataError(f"data manifest: bad 'mining' settings ({err}); its keys are "
                            f"MiningConfig fields") from err

    def subset(self, names: Iterable[str], stdlib: bool = False) -> DataManifest:
        """The same manifest limited to some distributions (file hashes dropped)."""
        wanted = {n.lower() for n in names}
        chosen = [d for d in self.distributions if d.name.lower() in wanted]
        missing = wanted - {d.name.lower() for d in chosen}
        if missing:
            raise DataError(f"the data manifest pins no distribution named {sorted(missing)}")
        return replace(self, path=None, distributions=chosen,
                       stdlib=self.stdlib if stdlib else None, mined=None, pairs=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.stdlib is not None:
            out["stdlib"] = asdict(self.stdlib)
        out["mining"] = self.mining
        out["dedup"] = self.dedup
        out["mined"] = asdict(self.mined) if self.mined else None
        out["pairs"] = asdict(self.pairs) if self.pairs else None
        out["distributions"] = [asdict(d) for d in self.distributions]
        return out

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path or self.path or "")
        if not str(target):
            raise DataError("this data manifest has no file to save to")
        target.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
        return target


def _file_hash(data: Any, where: str) -> FileHash | None:
    if data is None:
        return None
    try:
        return FileHash(int(data["records"]), str(data["sha256"]))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"data manifest: {where} needs 'records' and 'sha256'") from err


def load_data_manifest(path: str | Path) -> DataManifest:
    """Read and check a data manifest; DataError says what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"no data manifest at {str(path)!r}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"data manifest {str(path)!r} is not JSON ({err.msg}, line "
                        f"{err.lineno})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("distributions"), list):
        raise DataError(f"data manifest {str(path)!r} needs a 'distributions' list")
    dists = []
    for i, d in enumerate(raw["distributions"]):
        try:
            dists.append(PinnedWheel(**d))
        except TypeError as err:
            raise DataError(f"data manifest {str(path)!r}: distribution {i} ({d!r}) needs "
                            f"name, version, file and sha256 ({err})") from err
        dists[-1].tags()  # a wheel file name
    names = [d.name.lower() for d in dists]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"data manifest {str(path)!r} pins {dupes} more than once")
    stdlib = StdlibPin(**raw["stdlib"]) if raw.get("stdlib") else None
    known = {"stdlib", "mining", "dedup", "mined", "pairs", "distributions"}
    return DataManifest(path=path, distributions=dists, stdlib=stdlib,
                        mining=dict(raw.get("mining") or {}), dedup=dict(raw.get("dedup") or {}),
                        mined=_file_hash(raw.get("mined"), "'mined'"),
                        pairs=_file_hash(raw.get("pairs"), "'pairs'"),
                        extra={k: v for k, v in raw.items() if k not in known})


# ---------------------------------------------------------------------------------------------
# Fetching


class RegistryUnreachable(DataError):
    """pip could not reach the package index at all (no network, proxy, DNS)."""


_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def _platform_order(plats: Iterable[str]) -> list[str]:
    """Most specific first (pip prefers the earlier ``--platform``): manylinux_2_28 before
    manylinux_2_17 before manylinux2014, so a release with several builds gives the pinned one."""
    import re

    def key(plat: str) -> tuple[int, int, str]:
        m = re.match(r"manylinux_(\d+)_(\d+)_", plat)
        if m:
            return (int(m.group(1)), int(m.group(2)), plat)
        legacy = _LEGACY_MANYLINUX.get(plat.split("_", 1)[0])
        return (*legacy, plat) if legacy else (0, 0, plat)

    return sorted(set(plats), key=key, reverse=True)


def pip_download_args(pin: PinnedWheel, dest: Path, python: str | None) -> list[str]:
    """``pip download`` arguments that fetch exactly ``pin.file`` on any machine."""
    pys, abis, plats = pin.tags()
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--dest", str(dest)]
    if plats != ["any"]:
        for plat in _platform_order(plats):
            args += ["--platform", plat]
        impl = {p[:2] for p in pys} & {"cp", "pp"}
        if impl:
            args += ["--implementation", impl.pop()]
        for abi in abis:
            args += ["--abi", abi]
        if python:
            args += ["--python-version", ".".join(python.split(".")[:2])]
    return [*args, pin.requirement]


def _pip_failure(log: str, what: str, folder: Path | None = None) -> DataError:
    last = log.strip().splitlines()[-1] if log.strip() else "no output"
    if any(m in log for m in UNREACHABLE_MARKERS):
        return RegistryUnreachable(f"pip could not reach the package index for {what}: {last}. "
                                   f"Connect to the network"
                                   + (f", or copy the pinned files into {folder}." if folder
                                      else "."))
    return DataError(f"pip could not resolve {what}: {last}. A local version such as +cpu comes "
                     f"from the project's own wheel index: add that index with "
                     f"PIP_EXTRA_INDEX_URL" + (f", or copy the file into {folder}." if folder
                                               else "."))


@dataclass(frozen=True)
class Resolution:
    pin: PinnedWheel
    file: str | None  # what the index offers for the pin (None: nothing)
    sha256: str | None  # its hash as the index states it (None: not stated)

    @property
    def ok(self) -> bool:
        return self.file == self.pin.file and self.sha256 in (None, self.pin.sha256)


def _resolve(pins: list[PinnedWheel], python: str | None) -> dict[str, tuple[str, str | None]]:
    """{name: (file, sha256)} that pip would download for ``pins`` (metadata only: a dry run)."""
    from urllib.parse import unquote

    pys, abis, plats = set(), set(), set()
    for pin in pins:
        p, a, pl = pin.tags()
        pys.update(p), abis.update(a), plats.update(pl)
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "-q"]
    plats.discard("any")
    if plats:
        for plat in _platform_order(plats):
            args += ["--platform", plat]
        args += ["--implementation", "cp"]
        for abi in sorted(abis):
            args += ["--abi", abi]
        if python:
            args += ["--python-version", ".".join(python.split(".")[:2])]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([*args, "--report", str(report), *(p.requirement for p in pins)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise _pip_failure(done.stdout + done.stderr,
                               ", ".join(p.requirement for p in pins[:3])
                               + (" ..." if len(pins) > 3 else ""))
        data = json.loads(report.read_text(encoding="utf-8"))
    out = {}
    for item in data.get("install", []):
        info = item.get("download_info", {})
        name = item.get("metadata", {}).get("name", "")
        file = unquote(info.get("url", "").rsplit("/", 1)[-1])
        sha = (info.get("archive_info", {}).get("hashes") or {}).get("sha256")
        out[_canonical(name)] = (file, sha)
    return out


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def resolve_pins(manifest: DataManifest) -> list[Resolution]:
    """What the package index offers for every pin, without downloading the wheels (pip's dry
    run reads only metadata): one resolution for all, then pin by pin for any that came back as
    another file (several builds of a version can match the union of the pins' tags)."""
    python = manifest.stdlib.python if manifest.stdlib else None
    found = _resolve(manifest.distributions, python) if manifest.distributions else {}
    out = []
    for pin in manifest.distributions:
        file, sha = found.get(_canonical(pin.name), (None, None))
        if file != pin.file:
            file, sha = _resolve([pin], python).get(_canonical(pin.name), (None, None))
        out.append(Resolution(pin, file, sha))
    return out


def fetch_wheel(pin: PinnedWheel, cache: str | Path, python: str | None = None) -> Path:
    """The pinned wheel in ``cache/wheels``, downloaded when absent; its sha256 checked."""
    folder = Path(cache) / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pin.file
    if not target.is_file():
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp:
            done = subprocess.run(pip_download_args(pin, Path(tmp), python),
                                  check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise _pip_failure(done.stdout + done.stderr, f"{pin.requirement} ({pin.file})",
                                   folder)
            got = sorted(p.name for p in Path(tmp).iterdir())
            if pin.file not in got:
                raise DataError(f"pip download {pin.requirement} gave {got}, not the pinned "
                                f"{pin.file}: the index serves another build of this version. "
                                f"Copy the pinned file into {folder}.")
            shutil.move(str(Path(tmp) / pin.file), target)
    digest = sha256_file(target)
    if digest != pin.sha256:
        raise DataError(f"{target} has sha256 {digest}, but the data manifest pins "
                        f"{pin.sha256}: the file is not the pinned one. Delete it and fetch "
                        f"again; if it comes back different, the index serves altered files.")
    return target


def fetch_all(manifest: DataManifest, cache: str | Path,
              log: Log | None = None) -> list[Path]:
    """Every pinned wheel in the cache (fetching the missing ones), in manifest order."""
    say = log or (lambda _m: None)
    python = manifest.stdlib.python if manifest.stdlib else None
    out = []
    for pin in manifest.distributions:
        cached = (Path(cache) / "wheels" / pin.file).is_file()
        path = fetch_wheel(pin, cache, python)
        if not cached:
            say(f"fetched {path.name}")
        out.append(path)
    say(f"{len(out)} pinned wheels in {Path(cache) / 'wheels'}, sha256 checked")
    return out


# ---------------------------------------------------------------------------------------------
# Unpacking and sources

_INSTALLED_DATA = ("purelib", "platlib")  # .data categories an installer puts into site-packages


def _record_paths(zf: zipfile.ZipFile) -> list[str]:
    records = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise DataError(f"{zf.filename}: expected one .dist-info/RECORD, found {records}")
    text = zf.read(records[0]).decode("utf-8")
    return [row[0] for row in csv.reader(io.StringIO(text)) if row]


def _installed_path(rel: str) -> str | None:
    """Where an installer puts a wheel member in site-packages (None: outside of it)."""
    head, _, rest = rel.partition("/")
    if head.endswith(".data"):
        category, _, inner = rest.partition("/")
        return inner if category in _INSTALLED_DATA and inner else None
    return rel


def unpack_wheel(wheel: Path, cache: str | Path) -> Path:
    """The wheel laid out as in site-packages under ``cache/unpacked/<file stem>`` (once)."""
    root = Path(cache) / "unpacked" / wheel.name[: -len(".whl")]
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                rel = _installed_path(info.filename)
                if rel is None or rel.startswith("/") or ".." in Path(rel).parts:
                    continue
                dst = staged / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dst.open("wb") as fh:
                    shutil.copyfileobj(src, fh)
        staged.rename(root)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return root


def wheel_source(pin: PinnedWheel, wheel: Path, cache: str | Path) -> Source:
    root = unpack_wheel(wheel, cache)
    with zipfile.ZipFile(wheel) as zf:
        installed = [p for p in map(_installed_path, _record_paths(zf)) if p is not None]
    return Source(name=pin.name, version=pin.version, root=root, repo=pin.name,
                  files=code_files(installed))


def pinned_stdlib_source(pin: StdlibPin, root: str | Path | None = None) -> Source:
    """The standard library of ``pin.python``: this interpreter's when it is that version, or
    the folder ``root`` (a ``Lib`` folder of that version)."""
    if root is None:
        running = platform.python_version()
        if running != pin.python:
            raise DataError(
                f"the pinned corpus mines the standard library of Python {pin.python}, but this "
                f"interpreter is {running}. Run with Python {pin.python}, or pass the Lib folder "
                f"of a Python {pin.python} (--stdlib-root); mining another version would give "
                f"other pairs.")
        root = sysconfig.get_paths()["stdlib"]
    root = Path(root).resolve()
    if not (root / "os.py").is_file():
        raise DataError(f"{root} is not a Python standard library folder (no os.py)")
    return Source(name="cpython-stdlib", version=pin.python, root=root, exclude=STDLIB_EXCLUDE)


# ---------------------------------------------------------------------------------------------
# Mining


@dataclass
class SourceResult:
    name: str
    version: str | None
    pairs: int
    pairs_sha256: str
    expected_pairs: int | None
    expected_sha256: str | None

    @property
    def matches(self) -> bool | None:
        if self.expected_sha256 is None:
            return None
        return self.pairs_sha256 == self.expected_sha256 and self.pairs == self.expected_pairs


@dataclass
class PinnedMining:
    records: int
    sha256: str
    sources: list[SourceResult]
    stats: MiningStats

    def mismatches(self) -> list[SourceResult]:
        return [s for s in self.sources if s.matches is False]

    def unrecorded(self) -> list[SourceResult]:
        return [s for s in self.sources if s.matches is None]


def mine_pinned(manifest: DataManifest, cache: str | Path, out: str | Path,
                stdlib_root: str | Path | None = None, log: Log | None = None) -> PinnedMining:
    """Fetch, unpack and mine every pinned source into ``out`` (JSONL), in manifest order
    (standard library first, then the distributions); hash each source's records and the file."""
    say = log or (lambda _m: None)
    wheels = fetch_all(manifest, cache, log=say)
    sources: list[tuple[Source, StdlibPin | PinnedWheel]] = []
    if manifest.stdlib is not None:
        sources.append((pinned_stdlib_source(manifest.stdlib, stdlib_root), manifest.stdlib))
    for pin, wheel in zip(manifest.distributions, wheels, strict=True):
        sources.append((wheel_source(pin, wheel, cache), pin))
    cfg = manifest.mining_config()
    stats = MiningStats()
    results = []
    whole = hashlib.sha256()
    total = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for source, pin in sources:
            h = hashlib.sha256()
            n = 0
            for pair in mine_source(source, cfg, stats):
                line = (json.dumps(pair.to_record(), ensure_ascii=False) + "\n").encode("utf-8")
                h.update(line)
                whole.update(line)
                fh.write(line.decode("utf-8"))
                n += 1
            total += n
            results.append(SourceResult(source.name, source.version, n, h.hexdigest(),
                                        pin.pairs, pin.pairs_sha256))
            say(f"{source.name} {source.version}: {n} pairs")
    return PinnedMining(total, whole.hexdigest(), results, stats)


def record_mining(manifest: DataManifest, result: PinnedMining) -> DataManifest:
    """The manifest with the measured per-source pair counts and hashes and the file hash."""
    by_name = {s.name: s for s in result.sources}
    dists = [replace(d, pairs=by_name[d.name].pairs, pairs_sha256=by_name[d.name].pairs_sha256)
             for d in manifest.distributions]
    stdlib = manifest.stdlib
    if stdlib is not None:
        s = by_name["cpython-stdlib"]
        stdlib = replace(stdlib, pairs=s.pairs, pairs_sha256=s.pairs_sha256)
    return replace(manifest, distributions=dists, stdlib=stdlib,
                   mined=FileHash(result.records, result.sha256))


def check_mining(manifest: DataManifest, result: PinnedMining) -> None:
    """Raise DataError naming every source whose pairs differ from the recorded ones."""
    bad = result.mismatches()
    if bad:
        lines = [f"  {s.name} {s.version}: {s.pairs} pairs, sha256 {s.pairs_sha256[:12]} "
                 f"(pinned: {s.expected_pairs}, {str(s.expected_sha256)[:12]})" for s in bad]
        raise DataError("mining the pinned sources gave other pairs than the data manifest "
                        "records:\n" + "\n".join(lines) + "\nThe code that mines pairs "
                        "(training/data/pairs.py, the runtime's parsers) or a source differs "
                        "from when the manifest was written. If that change is intended, "
                        "record the new hashes (--record) and retrain.")
    if manifest.mined is not None and (manifest.mined.sha256 != result.sha256
                                       or manifest.mined.records != result.records):
        raise DataError(f"the mined pair file has {result.records} records, sha256 "
                        f"{result.sha256}; the data manifest records {manifest.mined.records}, "
                        f"{manifest.mined.sha256}. Every source matches, so the order or the "
                        f"record format changed; record again (--record) if intended.")


def check_file_hash(expected: FileHash | None, path: str | Path, what: str) -> FileHash:
    """The records and sha256 of a JSONL file; DataError when ``expected`` differs."""
    path = Path(path)
    with path.open("rb") as fh:
        records = sum(1 for line in fh if line.strip())
    got = FileHash(records, sha256_file(path))
    if expected is not None and got != expected:
        raise DataError(f"{what} {path} has {got.records} records, sha256 {got.sha256}; the data "
                        f"manifest records {expected.records}, {expected.sha256}. Check that the "
                        f"evaluation suites used for decontamination are the same, or record "
                        f"the new hash (--record) if the change is intended.")
    return got

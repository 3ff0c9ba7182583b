"""Encoders over a model directory: tokenise as the manifest says, run one ONNX exit, return vectors.

``ModelEncoder`` owns the model's inputs (``model_inputs.InputTokenizer``: template, tokenise,
truncate to the exit's ``max_tokens``, pad) and one lazily created ``ExitEncoder`` (an
onnxruntime session) per exit. Pooling, projection and normalisation happen inside each exit's
graph (``model_dir.py``), so encoding is: make the inputs, run.

Thread-safety: ``encode`` may be called from several threads at once (onnxruntime's ``run`` and
the tokenizer are thread-safe; sessions are created under a lock).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ModelDirError
from .model_dir import (
    ExitSpec,
    ModelDir,
    default_model_path,
    load_model_dir,
    sha256_file,
)
from .model_inputs import InputTokenizer

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OPTIONAL_INPUT_NAMES = ("token_type_ids",)  # fed zeros if an exported BERT graph kept it
OUTPUT_NAME = "embedding"
MAX_BATCH_TOKENS = 1024  # padded tokens per inference call (bounds activation memory)
VERIFY_CACHE_FILE = "verified-model-files.json"
VERIFY_CACHE_VERSION = 1
VERIFY_CACHE_MAX_ENTRIES = 256


def default_threads() -> int:
    """Intra-op threads when the config sets none: min(4, usable cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# -- opening and verifying a model directory ------------------------------------------------


def default_verify_cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("mose")) / VERIFY_CACHE_FILE


def _read_verify_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable checksum cache %s (%s); files will be re-hashed",
                    path, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != VERIFY_CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_verify_cache(path: Path, files: dict[str, Any]) -> None:
    live = {k: v for k, v in files.items() if Path(k).exists()}
    if len(live) > VERIFY_CACHE_MAX_ENTRIES:  # keep the most recently verified
        live = dict(sorted(live.items(), key=lambda kv: kv[1].get("at", 0))[
            -VERIFY_CACHE_MAX_ENTRIES:])
    payload = json.dumps({"version": VERIFY_CACHE_VERSION, "files": live}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache dir only costs re-hashing next time
        log.warning("could not write checksum cache %s (%s)", path, err)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    # ctime and inode change on any write or replacement, even one that restores the mtime.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def verify_checksums(model_dir: ModelDir, cache_path: Path | None = None) -> int:
    """Check every file the manifest lists against its checksum; return how many were hashed.

    With ``cache_path``, a file whose (path, size, mtime_ns, ctime_ns, inode) match a previous
    successful verification against the same checksum is not hashed again; any change to the
    file, or to the checksum the manifest expects, forces a fresh hash.
    """
    manifest = model_dir.manifest
    names = sorted({manifest.tokenizer, *(e.file for e in manifest.exits)})
    cache = _read_verify_cache(cache_path) if cache_path is not None else {}
    hashed = 0
    changed = False
    try:
        for name in names:
            target = (model_dir.path / name).resolve()
            expected = manifest.files[name]
            key = str(target)
            stamp = _stamp(target)  # before hashing: a later change alters the stamp
            entry = cache.get(key)
            if (isinstance(entry, dict) and entry.get("stamp") == stamp
                    and entry.get("sha256") == expected):
                continue
            hashed += 1
            if sha256_file(target) != expected:
                changed |= cache.pop(key, None) is not None
                raise ModelDirError(
                    f"{target} does not match the checksum in its manifest (the file is corrupt "
                    f"or was replaced). Re-export the model with 'mose export' or restore the "
                    f"file.")
            cache[key] = {"stamp": stamp, "sha256": expected, "at": time.time()}
            changed = True
    finally:
        if changed and cache_path is not None:
            _write_verify_cache(cache_path, cache)
    return hashed


def open_model_dir(
    path: str | Path | None = None,
    *,
    verify: bool = True,
    cache_path: Path | None = None,
    use_cache: bool = True,
) -> ModelDir:
    """Load and check a model directory (the embedded default when ``path`` is None).

    Checksums are verified, with successful verifications remembered in ``cache_path``
    (default: ``verified-model-files.json`` in the user cache folder) unless ``use_cache`` is
    False.
    """
    if path is None:
        root = default_model_path()
        if not root.is_dir():
            raise ModelDirError(
                f"this installation of mose has no embedded default model (expected at {root}). "
                f"Point the 'model' setting (or --model) at a model directory written by "
                f"'mose export', or reinstall a mose build that ships the default model.")
    else:
        root = Path(path).expanduser()
    model_dir = load_model_dir(root, verify=False)  # manifest, file presence, checksum entries
    if verify:
        cache = (cache_path or default_verify_cache_path()) if use_cache else None
        verify_checksums(model_dir, cache)
    return model_dir


# -- one exit: an onnxruntime session ------------------------------------------------------


OPTIMIZED_CACHE_DIR = "optimized-graphs"
OPTIMIZED_SUFFIX = ".ort"
OPTIMIZED_MAX_AGE_S = 30 * 24 * 3600  # entries older than this go when a new one is written


def _optimized_path(path: Path, folder: Path, ort_version: str) -> Path | None:
    """The cache entry of an exit file's optimised graph (None when the file cannot be
    stat'ed: the session creation then says what is wrong)."""
    import hashlib

    try:
        resolved = path.resolve()
        st = resolved.stat()
    except OSError:
        return None
    key = f"{resolved}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|" \
          f"{ort_version}|extended|cpu"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return folder / f"{path.name.split('.')[0]}-{digest}{OPTIMIZED_SUFFIX}"


def _prune_optimized(folder: Path, keep: Path) -> None:
    """Remove cache entries not rewritten for OPTIMIZED_MAX_AGE_S (a model replaced long ago
    leaves its entries behind; one still in use is simply rebuilt once)."""
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry == keep or not entry.name.endswith(OPTIMIZED_SUFFIX):
            continue
        try:
            if now - entry.stat().st_mtime > OPTIMIZED_MAX_AGE_S:
                entry.unlink()
        except OSError:
            continue


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class ExitEncoder:
    """One exit's ONNX graph in an onnxruntime session: (B, T) ids and mask -> (B, D) vectors.

    With ``optimized_cache`` (a folder), the graph as onnxruntime optimised it is kept there
    in onnxruntime's own format, keyed by the model file (path, size, times, inode) and the
    onnxruntime version; a later process loads that instead of parsing and optimising the
    ONNX file again (measured: ~30 ms instead of ~80 ms for the deep exit), with the same
    vectors bit for bit. Any change to the file or to onnxruntime gives a new key.
    """

    def __init__(self, path: Path, spec: ExitSpec, threads: int | None = None,
                 optimized_cache: Path | None = None) -> None:
        import onnxruntime as ort

        self.path = path
        self.spec = spec
        self.threads = threads or default_threads()
        cached = _optimized_path(path, optimized_cache, ort.__version__) if optimized_cache \
            else None
        self._session = None
        if cached is not None and cached.is_file():
            try:
                self._session = self._create(ort, cached, optimized=True)
            # onnxruntime's own Exception subclasses: a damaged or foreign entry is rebuilt.
            except Exception as err:  # noqa: BLE001
                log.warning("ignoring the cached optimised graph %s (%s)", cached, err)
                _unlink(cached)
        if self._session is None:
            try:
                self._session = self._create_and_cache(ort, cached)
            # onnxruntime raises its own Exception subclasses (InvalidProtobuf, Fail, ...).
            except Exception as err:
                raise ModelDirError(f"onnxruntime cannot load exit {spec.layer} from {path}: "
                                    f"{err}. Re-export the model with 'mose export'.") from err
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        unknown = inputs - set(INPUT_NAMES) - set(OPTIONAL_INPUT_NAMES)
        if not set(INPUT_NAMES) <= inputs or unknown or OUTPUT_NAME not in outputs:
            raise ModelDirError(
                f"{path} does not follow the model-directory contract: inputs {sorted(inputs)} "
                f"(expected {list(INPUT_NAMES)}), outputs {sorted(outputs)} (expected "
                f"[{OUTPUT_NAME!r}]). Re-export the model with 'mose export'.")
        self._token_types = "token_type_ids" in inputs

    def _create(self, ort, path: Path, optimized: bool = False, save_to: Path | None = None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Extended, not all: the last level adds only hardware layout transforms (for
        # convolutions), which an encoder has none of; it gives the same vectors bit for bit at
        # the same speed, and skipping it takes about a third off the session's creation, which
        # a one-shot `mose search` pays on every call. A cached graph is optimised already.
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                                            if optimized else
                                            ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        options.log_severity_level = 3  # errors only
        # The arena keeps the peak of every batch shape for the life of the session (measured:
        # 776 MB vs 448 MB RSS after encoding 256 long functions); without it, memory returns
        # to the allocator after each batch at a small speed cost.
        options.enable_cpu_mem_arena = False
        # Idle threads sleep instead of spinning after a run: spinning held both cores for a
        # while after each query encode and doubled the p95 of the full-text ranking that
        # follows at 100k chunks (benchmarks/workspace_bench.py), for ~10% encode speed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if save_to is not None:
            options.optimized_model_filepath = str(save_to)
            options.add_session_config_entry("session.save_model_format", "ORT")
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def _create_and_cache(self, ort, cached: Path | None):
        """A session on the ONNX file; with ``cached``, its optimised graph is saved there
        (written under a temporary name, then renamed: concurrent processes never read half
        a file). A cache that cannot be written costs only this speed-up."""
        if cached is not None:
            tmp = cached.with_name(f".{os.getpid()}-{threading.get_ident()}-{cached.name}")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                session = self._create(ort, self.path, save_to=tmp)
                os.replace(tmp, cached)
                _prune_optimized(cached.parent, keep=cached)
                return session
            except Exception as err:  # noqa: BLE001 (onnxruntime's or the disk's: plain load)
                log.info("not caching the optimised graph of %s (%s)", self.path, err)
                _unlink(tmp)
        return self._create(ort, self.path)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64, (B, T) int64 -> (B, D) float32, as the graph outputs it."""
        assert input_ids.shape == attention_mask.shape and input_ids.ndim == 2, (
            f"ids {input_ids.shape} and mask {attention_mask.shape} must be the same (B, T)")
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        out = self._session.run([OUTPUT_NAME], feeds)[0]  # (B, D)
        if out.shape != (input_ids.shape[0], self.spec.dim):
            raise ModelDirError(
                f"exit {self.spec.layer} ({self.path}) returned shape {out.shape}; the manifest "
                f"says (batch, {self.spec.dim}). Re-export the model.")
        return np.ascontiguousarray(out, dtype=np.float32)


# -- encode cost ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeCost:
    """Wall-clock cost of encoding ``items`` inputs (after a warm-up)."""

    items: int
    seconds: float
    tokens: int | None = None  # total input tokens, when the encoder can tell

    @property
    def seconds_per_item(self) -> float:
        return self.seconds / self.items if self.items else 0.0

    @property
    def seconds_per_1k(self) -> float:
        return 1000.0 * self.seconds_per_item


class _Encodes(Protocol):
    def encode(self, texts: Sequence[str], kind: str, exit: int,
               langs: Sequence[str] | None = None) -> np.ndarray: ...


def timed_encode(
    encoder: _Encodes,
    texts: Sequence[str],
    kind: str,
    exit: int,
    langs: Sequence[str] | None = None,
    warmup: int = 8,
) -> tuple[np.ndarray, EncodeCost]:
    """Encode ``texts`` and time it; the first ``warmup`` items are encoded once before timing
    (session creation and first-run allocations are not the steady cost)."""
    if warmup and texts:
        n = min(warmup, len(texts))
        encoder.encode(list(texts[:n]), kind, exit, None if langs is None else list(langs[:n]))
    start = time.perf_counter()
    vectors = encoder.encode(texts, kind, exit, langs)
    return vectors, EncodeCost(items=len(texts), seconds=time.perf_counter() - start)


# -- the model: tokenizer + exits ------------------------------------------------------------


class ModelEncoder:
    """The model of a model directory: ``encode(texts, kind, exit)`` -> (N, D) float32."""

    def __init__(self, model_dir: ModelDir, threads: int | None = None,
                 optimized_cache: Path | None = None) -> None:
        self.model_dir = model_dir
        self.manifest = model_dir.manifest
        self.threads = threads or default_threads()
        self.optimized_cache = optimized_cache  # see ExitEncoder; None: no cache
        self.inputs = InputTokenizer.for_model_dir(model_dir)
        self._exits: dict[int, ExitEncoder] = {}
        self._lock = threading.Lock()
        self._foreground = 0  # foreground() blocks now open (queries)
        self._foreground_done = threading.Condition()

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        threads: int | None = None,
        verify: bool = True,
        cache_path: Path | None = None,
        use_cache: bool = True,
    ) -> ModelEncoder:
        """Open a model directory (the embedded default when ``path`` is None); see
        ``open_model_dir`` for checksum verification and its cache. Unless ``use_cache`` is
        False, the exits' optimised graphs are cached in a folder beside that cache."""
        model_dir = open_model_dir(path, verify=verify, cache_path=cache_path,
                                   use_cache=use_cache)
        optimized = ((cache_path or default_verify_cache_path()).parent / OPTIMIZED_CACHE_DIR
                     if use_cache else None)
        return cls(model_dir, threads=threads, optimized_cache=optimized)

    # -- the small encoder interface shared with training (evaluate.Encoder) --

    @property
    def name(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"

    @property
    def exits(self) -> tuple[int, ...]:
        """Exported exit layers, shallow to deep."""
        return tuple(sorted(e.layer for e in self.manifest.exits))

    @property
    def index_exit(self) -> int:
        return self.manifest.index_exit

    @property
    def rerank_exit(self) -> int:
        return self.manifest.rerank_exit

    def dim(self, exit: int) -> int:
        return self.manifest.exit(exit).dim

    def session(self, exit: int) -> ExitEncoder:
        """The exit's session, created on first use."""
        session = self._exits.get(exit)
        if session is None:
            spec = self.manifest.exit(exit)
            with self._lock:
                session = self._exits.get(exit)
                if session is None:
                    session = ExitEncoder(self.model_dir.exit_path(exit), spec, self.threads,
                                          self.optimized_cache)
                    self._exits[exit] = session
        return session

    # -- tokenisation --

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each raw text, without template or special tokens (for sizing chunks)."""
        return self.inputs.count_tokens(texts)

    def tokenize(
        self,
        texts: Sequence[str],
        kind: str,
        exit: int,
        langs: Sequence[str] | None = None,
        max_tokens: int | None = None,
    ) -> list[list[int]]:
        """Token ids of each input as the exit receives them (template, specials, truncation
        to the exit's ``max_tokens``, or to ``max_tokens`` when that is smaller)."""
        limit = self.manifest.exit(exit).max_tokens
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        return self.inputs.encode(texts, kind, limit, _check_langs(texts, langs))

    # -- encoding --

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """While open (a query is being answered), ``encode(background=True)`` calls (indexing,
        the deep pass) pause between runs, so that the query has the cores to itself instead
        of sharing them with bulk work. Re-entrant and thread-safe."""
        with self._foreground_done:
            self._foreground += 1
        try:
            yield
        finally:
            with self._foreground_done:
                self._foreground -= 1
                if not self._foreground:
                    self._foreground_done.notify_all()

    def _yield_to_foreground(self) -> None:
        with self._foreground_done:
            while self._foreground:
                self._foreground_done.wait()

    def encode(
        self,
        texts: Sequence[str],
        kind: str,
        exit: int,
        langs: Sequence[str] | None = None,
        batch_size: int = 32,
        background: bool = False,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """(N, D) float32 embeddings of ``texts`` (L2-normalised when the exit says so), in the
        order given. Inputs are sorted by length and batched with similar lengths together, so
        padding is small; the result does not depend on ``batch_size``. ``background``: bulk
        work that waits, before each run, while a :meth:`foreground` block is open.
        ``max_tokens`` cuts inputs shorter than the exit's limit (as training does)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        session = self.session(exit)  # also checks that the exit exists
        if session.spec.quantization.startswith("int8-dynamic"):
            # Dynamic quantisation scales activations over the whole batch (padding included),
            # so a text's vector would depend on its batch-mates (measured: mean cosine 0.994,
            # min 0.990 between batched and single encodings at the deep exit). One text per
            # run makes every vector a function of its text alone, at the same throughput on
            # CPU for function-sized inputs (37.9/s vs 37.6/s, exit 6, 2 threads).
            batch_size = 1
        ids = self.tokenize(texts, kind, exit, langs, max_tokens)
        out = np.empty((len(ids), session.spec.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for batch in _batches(order, [len(x) for x in ids], batch_size, MAX_BATCH_TOKENS):
            input_ids, mask = self.inputs.pad([ids[i] for i in batch])  # (B, T) each
            if background:
                self._yield_to_foreground()
            out[batch] = session.run(input_ids, mask)
        return out

    def encode_cost(
        self,
        texts: Sequence[str],
        kind: str,
        exit: int,
        langs: Sequence[str] | None = None,
        batch_size: int = 32,
        warmup: int = 8,
    ) -> EncodeCost:
        """Time ``encode`` on ``texts`` (after a warm-up of ``warmup`` items), with the token
        count: the measurement behind the manifest's ``relative_cost`` and ``mose eval``."""
        langs = _check_langs(texts, langs)
        tokens = sum(len(i) for i in self.tokenize(texts, kind, exit, langs))
        if warmup and texts:
            self.encode(list(texts[:warmup]), kind, exit, list(langs[:warmup]), batch_size)
        start = time.perf_counter()
        self.encode(texts, kind, exit, langs, batch_size)
        return EncodeCost(items=len(texts), seconds=time.perf_counter() - start, tokens=tokens)


def _batches(order: list[int], lengths: list[int], batch_size: int,
             max_tokens: int) -> Iterator[list[int]]:
    """Consecutive groups of ``order`` (sorted by length) with at most ``batch_size`` items and
    at most ``max_tokens`` padded tokens (attention memory grows with batch x length^2)."""
    batch: list[int] = []
    for i in order:
        width = lengths[i]  # ``order`` is sorted by length: the newest item is the longest
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _check_langs(texts: Sequence[str], langs: Sequence[str] | None) -> Sequence[str]:
    if langs is None:
        return [""] * len(texts)
    if len(langs) != len(texts):
        raise ValueError(f"got {len(langs)} languages for {len(texts)} texts")
    return langs

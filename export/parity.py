"""Parity: an exported exit must compute what the PyTorch model computes.

Float files: max |ONNX - PyTorch| over every embedding value <= ``tolerance`` (1e-4), on a
padded batch of real code and text of varying lengths (some truncated at ``max_tokens``) and
on a single unpadded input. Int8 files: mean cosine to the PyTorch embedding >= ``min_cosine``
(0.99), each input encoded alone as the runtime encodes with int8 files. Each result records
the gate it passed and its margin. A failure raises ``ParityError`` saying which exit failed by
how much and what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mose_lsp.errors import ModelDirError
from mose_lsp.model_dir import ExitSpec

from .errors import ExportError, ParityError
from .inputs import InputEncoder, Sample, parity_samples
from .onnx_export import INT8, attention_blocks

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MIN_COSINE = 0.99


@dataclass(frozen=True)
class ExitParity:
    layer: int
    file: str
    quantization: str
    dim: int
    size_bytes: int
    attention_blocks: int
    max_abs_diff: float  # max |ONNX - PyTorch| over the batch (int8 files too, for information)
    mean_cosine: float  # mean cosine ONNX vs PyTorch over the batch
    min_cosine: float
    kept: bool = True  # False for the float file an int8 file was quantised from
    gate: str = ""  # the check this file passed, e.g. "mean_cosine >= 0.99"
    margin: float = 0.0  # how far the measured value is inside the gate


@dataclass(frozen=True)
class ParityReport:
    exits: tuple[ExitParity, ...]
    tolerance: float
    min_cosine: float
    inputs: int  # number of sequences checked
    longest: int  # tokens in the longest sequence

    def to_json(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "min_cosine": self.min_cosine,
                "inputs": self.inputs, "longest_tokens": self.longest,
                "exits": [asdict(e) for e in self.exits]}

    def to_markdown(self) -> str:
        rows = [("| exit | file | quantization | dim | MB | attention blocks | max abs diff "
                "| mean cos | min cos | gate (margin) |"),
                "|---|---|---|---|---|---|---|---|---|---|"]
        for e in self.exits:
            file = e.file if e.kept else f"{e.file} (checked, then quantised)"
            rows.append(f"| {e.layer} | {file} | {e.quantization} | {e.dim} "
                        f"| {e.size_bytes / 1e6:.1f} | {e.attention_blocks} "
                        f"| {e.max_abs_diff:.2e} | {e.mean_cosine:.5f} | {e.min_cosine:.5f} "
                        f"| {e.gate} ({e.margin:+.2g}) |")
        rows.append(f"\n{self.inputs} inputs (code and text, longest {self.longest} tokens); "
                    f"float files need max abs diff <= {self.tolerance:g}, int8 files mean "
                    f"cosine >= {self.min_cosine:g} (one input per run, as the runtime "
                    f"encodes).")
        return "\n".join(rows)


def torch_embeddings(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray,
                     layers: tuple[int, ...]) -> dict[int, np.ndarray]:
    """(B, D) float32 embeddings of each exit in ``layers`` from the PyTorch model."""
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(ids), torch.from_numpy(mask), exits=layers)
    except (IndexError, AssertionError, RuntimeError) as err:
        raise ExportError(f"the PyTorch model cannot encode the parity inputs ({err}). Check that "
                          f"the tokenizer is the model's own (its ids must fit the vocabulary) "
                          f"and that --max-tokens does not exceed the model's positions.") from err
    return {layer: out[layer].float().numpy() for layer in layers}


def onnx_embeddings(path: Path, ids: np.ndarray, mask: np.ndarray, layer: int,
                    dim: int) -> np.ndarray:
    """(B, D) embeddings from the exit file, through the runtime's own session wrapper."""
    from mose_lsp.encoder import ExitEncoder

    spec = ExitSpec(layer=layer, file=path.name, dim=dim, pooling="mean", normalize=True,
                    max_tokens=int(ids.shape[1]))
    try:
        return ExitEncoder(path, spec).run(ids, mask)
    except ModelDirError as err:
        raise ParityError(f"the runtime cannot run {path.name} as exit {layer}: {err}") from err
    except Exception as err:  # onnxruntime raises its own exception types for bad inputs
        raise ParityError(f"onnxruntime cannot run {path.name}: {err}. The file is corrupt or "
                          f"not an exported exit; re-export the model.") from err


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


class ParityChecker:
    """Holds the parity inputs (tokenised once) and checks exit files against the model."""

    def __init__(self, model: torch.nn.Module, encoder: InputEncoder,
                 tolerance: float = DEFAULT_TOLERANCE, min_cosine: float = DEFAULT_MIN_COSINE,
                 samples: list[Sample] | None = None, layers: tuple[int, ...] | None = None):
        """``layers``: the exits that will be checked (default: all the model's)."""
        self.model = model.eval()
        self.layers = tuple(sorted(layers or model.exit_layers))
        self.tolerance = tolerance
        self.min_cosine = min_cosine
        self.ids, self.mask = encoder.batch(samples or parity_samples())  # (B, T) padded batch
        shortest = int(self.mask.sum(1).argmin())
        length = int(self.mask[shortest].sum())
        self.single = (self.ids[shortest : shortest + 1, :length],  # (1, t): no padding at all
                       self.mask[shortest : shortest + 1, :length])
        self._references: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reference(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """PyTorch embeddings of exit ``layer`` for the batch and the single input.

        The first call computes every exit to be checked in one pass (blocks are shared), so
        checking several exits, or a float and an int8 file, costs one forward.
        """
        if layer not in self._references:
            layers = tuple(sorted({*self.layers, layer}))
            batch = torch_embeddings(self.model, self.ids, self.mask, layers)
            single = torch_embeddings(self.model, *self.single, layers)
            self._references = {k: (batch[k], single[k]) for k in layers}
        return self._references[layer]

    @property
    def example(self) -> tuple[np.ndarray, np.ndarray]:
        """A small real padded batch for tracing: two inputs, cut to 16 tokens."""
        order = np.argsort(self.mask.sum(1))
        rows = order[[0, len(order) // 2]]
        width = int(min(16, self.mask[rows].sum(1).max()))
        return self.ids[rows, :width].copy(), self.mask[rows, :width].copy()

    def check(self, path: Path, layer: int, quantization: str) -> ExitParity:
        """Compare one exit file with the model; raise ParityError when it does not hold."""
        reference, single_ref = self.reference(layer)
        dim = int(reference.shape[1])
        if quantization == INT8:
            # One input per run, as the runtime encodes with int8 files (mose_lsp.encoder):
            # dynamic quantisation scales activations over a whole batch, padding included.
            got = np.concatenate([onnx_embeddings(path, self.ids[i:i + 1, :n],
                                                  self.mask[i:i + 1, :n], layer, dim)
                                  for i, n in enumerate(self.mask.sum(1))])
        else:
            got = onnx_embeddings(path, self.ids, self.mask, layer, dim)  # shape checked there
        single_got = onnx_embeddings(path, *self.single, layer, dim)
        diff = float(max(np.abs(got - reference).max(), np.abs(single_got - single_ref).max()))
        cos = np.concatenate([_cosines(got, reference), _cosines(single_got, single_ref)])
        result = ExitParity(layer=layer, file=path.name, quantization=quantization,
                            dim=int(got.shape[1]), size_bytes=path.stat().st_size,
                            attention_blocks=attention_blocks(path), max_abs_diff=diff,
                            mean_cosine=float(cos.mean()), min_cosine=float(cos.min()))
        if quantization == INT8:
            result = replace(result, gate=f"mean_cosine >= {self.min_cosine:g}",
                             margin=result.mean_cosine - self.min_cosine)
            if not result.mean_cosine >= self.min_cosine:  # also catches NaN
                raise ParityError(
                    f"exit {layer} ({path.name}): int8 embeddings have mean cosine "
                    f"{result.mean_cosine:.4f} to the PyTorch ones (min {result.min_cosine:.4f}), "
                    f"below {self.min_cosine}. Quantisation damages this model too much: export "
                    f"without it (--no-int8).")
        else:
            result = replace(result, gate=f"max_abs_diff <= {self.tolerance:g}",
                             margin=self.tolerance - diff)
        if quantization != INT8 and not diff <= self.tolerance:
            raise ParityError(
                f"exit {layer} ({path.name}): ONNX differs from PyTorch by up to {diff:.3g} "
                f"(tolerance {self.tolerance:g}) on real inputs. The exported graph does not "
                f"compute what the model computes: check that exit_module({layer}) matches "
                f"forward and has no shape-dependent Python branches, then re-export.")
        return result

    def report(self, results: list[ExitParity]) -> ParityReport:
        return ParityReport(exits=tuple(results), tolerance=self.tolerance,
                            min_cosine=self.min_cosine, inputs=int(self.ids.shape[0]) + 1,
                            longest=int(self.mask.sum(1).max()))

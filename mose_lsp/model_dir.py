"""The model directory: the contract between ``mose export`` and the runtime.

A model directory holds ``manifest.json``, the tokenizer (``tokenizer.json``) and one ONNX
file per exported exit. Each ONNX file takes ``input_ids`` and ``attention_mask`` (int64,
shape (B, T)) and returns ``embedding`` (float32, shape (B, D)): the exit is cut at its layer
and pooling, projection and normalisation happen inside the graph, so the runtime only
tokenises and runs the session.

The runtime refuses a directory whose manifest is malformed or whose files do not match the
checksums recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelDirError

MANIFEST = "manifest.json"
FORMAT = "mose-model-dir"
FORMAT_VERSION = 1
POOLINGS = ("mean", "cls", "last")
INPUT_PLACEHOLDER = "{input}"
LANG_PLACEHOLDER = "{lang}"


@dataclass(frozen=True)
class ExitSpec:
    """One exported exit."""

    layer: int  # transformer layer the exit reads (1-based; layer L = output of block L)
    file: str  # ONNX file name inside the model directory
    dim: int  # embedding dimension
    pooling: str  # "mean" | "cls" | "last": how token states become one vector (in the graph)
    normalize: bool  # L2-normalised inside the graph (then cosine == dot product)
    max_tokens: int  # longest input the exit was trained and exported for
    quantization: str = "none"  # "none" | "int8-dynamic-per-channel"
    relative_cost: float | None = None  # encode cost relative to the deepest exported exit


@dataclass(frozen=True)
class InputFormat:
    """How a raw string becomes the model's input text.

    ``template`` contains ``{input}`` (the text or code) and optionally ``{lang}``; special
    tokens spelled in the template (for example ``<sep>``, ``<cls>``) must exist in the
    tokenizer. ``add_special_tokens`` asks the tokenizer to add its own (BERT's [CLS]/[SEP]).
    """

    template: str = INPUT_PLACEHOLDER
    add_special_tokens: bool = True

    def render(self, content: str, lang: str = "") -> tuple[str, str]:
        """Return (prefix, suffix) around ``content``; the content is never template-expanded."""
        head, _, tail = self.template.partition(INPUT_PLACEHOLDER)
        name = lang or "source"
        return head.replace(LANG_PLACEHOLDER, name), tail.replace(LANG_PLACEHOLDER, name)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    exits: tuple[ExitSpec, ...]
    index_exit: int  # layer of the exit that embeds every chunk (shallow)
    rerank_exit: int  # layer of the exit that re-ranks candidates (deep)
    text_format: InputFormat = field(default_factory=InputFormat)
    code_format: InputFormat = field(default_factory=InputFormat)
    tokenizer: str = "tokenizer.json"
    pad_id: int = 0
    base_model: str = ""
    license: str = ""
    attribution: str = ""
    num_layers: int = 0  # depth of the full model the exits were cut from
    files: dict[str, str] = field(default_factory=dict)  # file name -> "sha256:<hex>"
    provenance: dict[str, Any] = field(default_factory=dict)

    def exit(self, layer: int) -> ExitSpec:
        for spec in self.exits:
            if spec.layer == layer:
                return spec
        have = ", ".join(str(e.layer) for e in self.exits)
        raise ModelDirError(f"the model has no exit at layer {layer} (exported exits: {have})")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **data}
        data["exits"] = [asdict(e) for e in self.exits]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelDirError(f"{where} is not a mose model manifest (no format: {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelDirError(
                f"{where} has format_version {data.get('format_version')!r}; this mose reads "
                f"version {FORMAT_VERSION}. Re-export the model with this version of mose."
            )
        try:
            exits = tuple(ExitSpec(**e) for e in data["exits"])
            fields = {k: v for k, v in data.items() if k not in ("format", "format_version")}
            fields["exits"] = exits
            fields["text_format"] = InputFormat(**fields.get("text_format", {}))
            fields["code_format"] = InputFormat(**fields.get("code_format", {}))
            manifest = cls(**fields)
        except (KeyError, TypeError) as err:
            raise ModelDirError(f"{where} is malformed: {err}") from err
        manifest.validate(where)
        return manifest

    def validate(self, where: str = MANIFEST) -> None:
        if not self.exits:
            raise ModelDirError(f"{where} lists no exits")
        layers = [e.layer for e in self.exits]
        if len(set(layers)) != len(layers):
            raise ModelDirError(f"{where} lists an exit layer twice: {layers}")
        for e in self.exits:
            if e.pooling not in POOLINGS:
                raise ModelDirError(f"{where}: exit {e.layer} has pooling {e.pooling!r}, "
                                    f"expected one of {POOLINGS}")
            if e.dim <= 0 or e.max_tokens <= 0 or e.layer <= 0:
                raise ModelDirError(f"{where}: exit {e.layer} has a non-positive size field")
        for layer in (self.index_exit, self.rerank_exit):
            self.exit(layer)
        for fmt in (self.text_format, self.code_format):
            if INPUT_PLACEHOLDER not in fmt.template:
                raise ModelDirError(f"{where}: input template {fmt.template!r} lacks "
                                    f"{INPUT_PLACEHOLDER}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer

    def exit_path(self, layer: int) -> Path:
        return self.path / self.manifest.exit(layer).file


def load_model_dir(path: str | Path, verify: bool = True) -> ModelDir:
    """Read and check a model directory; raise ModelDirError with what to do if it is unusable."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist. Point the 'model' setting "
                            f"at a folder written by 'mose export', or leave it unset for the "
                            f"embedded default model.")
    manifest_path = root / MANIFEST
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{root} has no {MANIFEST}: it is not a model directory written "
                            f"by 'mose export'.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"{manifest_path} cannot be read as JSON ({err}). Re-export the "
                            f"model with 'mose export'.") from err
    manifest = Manifest.from_json(data, str(manifest_path))
    needed = {manifest.tokenizer, *(e.file for e in manifest.exits)}
    missing_sums = sorted(needed - set(manifest.files))
    if missing_sums:
        raise ModelDirError(f"{manifest_path} records no checksum for {', '.join(missing_sums)}; "
                            f"re-export the model with 'mose export'.")
    for name in sorted(needed):
        target = root / name
        if not target.is_file():
            raise ModelDirError(f"{root} lacks {name}, which its manifest lists. Re-export the "
                                f"model or restore the file.")
        if verify and sha256_file(target) != manifest.files[name]:
            raise ModelDirError(f"{target} does not match the checksum in its manifest (the file "
                                f"is corrupt or was replaced). Re-export the model or restore "
                                f"the file.")
    return ModelDir(root, manifest)


def write_manifest(root: str | Path, manifest: Manifest) -> Manifest:
    """Compute checksums of the tokenizer and every exit file, then write manifest.json."""
    root = Path(root)
    names = [manifest.tokenizer, *(e.file for e in manifest.exits)]
    files = {name: sha256_file(root / name) for name in names}
    manifest = Manifest(**{**manifest.__dict__, "files": files})
    manifest.validate()
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n",
                                 encoding="utf-8")
    return manifest


def default_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(__file__).resolve().parent / "default_model"

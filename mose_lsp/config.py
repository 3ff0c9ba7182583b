"""Typed settings, validated once: one source of truth for defaults, documented per field.

Settings come from the CLI, the language server's ``initializationOptions`` and
``workspace/didChangeConfiguration``. An invalid value never stops the tool: it falls back to
the default and the caller is told which (``Settings.from_dict`` returns the warnings).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

#: Files that may hold secrets: never read, never indexed (gitignore syntax).
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*",
    "id_ed25519*", ".netrc", ".npmrc", ".pypirc", "credentials", "credentials.*",
    "*.keystore", "*.jks", ".aws/", ".ssh/", ".gnupg/", "secrets.*",
)

#: Folders that are never worth indexing even when no .gitignore says so.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", "node_modules/", "__pycache__/", ".venv/", "venv/", ".tox/",
    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".idea/", ".vscode/", "dist/", "build/",
    "target/", ".next/", ".cache/", "*.egg-info/",
)


@dataclass(frozen=True)
class Settings:
    #: Model directory written by ``mose export``; None = the embedded default model.
    model: str | None = None
    #: Where the index lives; None = a per-workspace folder in the user's cache directory.
    index_dir: str | None = None
    #: onnxruntime intra-op threads; 0 = min(4, CPU cores).
    threads: int = 0
    #: Chunks embedded per onnxruntime call.
    batch_size: int = 32
    #: Candidates fetched from the shallow index for re-ranking with the deep exit.
    rerank_candidates: int = 200
    #: Re-rank with the deep exit (False: shallow scores only).
    rerank: bool = True
    #: Weight of the lexical signal fused with the deep cosine (score = cosine + w * BM25 /
    #: the query's best BM25 in the workspace); 0 disables it. 0..1.
    lexical_weight: float = 0.1
    #: Fill deep-exit vectors for the whole workspace in the background when idle.
    background_deep: bool = True
    #: Files larger than this are skipped (bytes).
    max_file_bytes: int = 1_000_000
    #: Extra gitignore-style patterns to exclude (on top of .gitignore and .moseignore).
    exclude: tuple[str, ...] = ()
    #: Secret-file patterns never read; replace to change the defaults.
    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    #: Honour .gitignore files.
    use_gitignore: bool = True
    #: Delay before an edit or file event is processed (milliseconds).
    debounce_ms: int = 300
    #: Results returned by default.
    limit: int = 10

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None,
                  base: Settings | None = None) -> tuple[Settings, list[str]]:
        """Validate ``data`` (camelCase or snake_case keys) on top of ``base``.

        Returns the settings and one warning per ignored key or invalid value.
        """
        base = base or cls()
        if data is None:
            return base, []
        if not isinstance(data, dict):
            return base, [f"settings must be an object, got {type(data).__name__}; using defaults"]
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        warnings: list[str] = []
        defaults = cls()
        for raw_key, value in data.items():
            key = _snake(str(raw_key))
            if key not in known:
                warnings.append(f"unknown setting {raw_key!r} ignored")
                continue
            if value is None:  # JSON null: unset, the default (editors send null for "empty")
                values[key] = getattr(defaults, key)
                continue
            ok, converted = _convert(key, value, getattr(defaults, key))
            if ok:
                values[key] = converted
            else:
                warnings.append(f"setting {raw_key!r}={value!r} is invalid ({converted}); "
                                f"using the default {getattr(base, key)!r}")
        return replace(base, **values), warnings

    def resolved_threads(self) -> int:
        return self.threads or max(1, min(4, os.cpu_count() or 1))


def settings_schema() -> dict[str, dict[str, Any]]:
    """Every setting as clients name it (camelCase) with its JSON type, default and bounds:
    the one description that the editors' settings lists are tested against. ``null`` is
    accepted for every key and means the default."""
    out: dict[str, dict[str, Any]] = {}
    defaults = Settings()
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        entry: dict[str, Any]
        if f.name in ("model", "index_dir"):
            entry = {"type": "string", "default": None}
        elif isinstance(default, bool):
            entry = {"type": "boolean", "default": default}
        elif isinstance(default, (int, float)):
            entry = {"type": "number" if isinstance(default, float) else "integer",
                     "default": default}
            lo, hi = _LIMITS[f.name]
            entry.update(minimum=lo, maximum=hi)
        else:
            entry = {"type": "array", "items": "string", "default": list(default)}
        out[_camel(f.name)] = entry
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out).lstrip("_")


_LIMITS = {
    "threads": (0, 256), "batch_size": (1, 1024), "rerank_candidates": (1, 10_000),
    "max_file_bytes": (1_000, 1_000_000_000), "debounce_ms": (0, 60_000), "limit": (1, 1_000),
    "lexical_weight": (0.0, 1.0),
}


def _convert(key: str, value: Any, default: Any) -> tuple[bool, Any]:
    if key in ("model", "index_dir"):
        if value is None or value == "":
            return True, None
        if isinstance(value, str):
            return True, str(Path(value).expanduser())
        return False, "expected a path string"
    if isinstance(default, bool):
        return (True, value) if isinstance(value, bool) else (False, "expected true or false")
    if isinstance(default, float):
        # JSON has one number type: an integer is a valid float setting (0 or 1).
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, "expected a number"
        number = float(value)
        lo, hi = _LIMITS[key]
        if not math.isfinite(number) or not lo <= number <= hi:
            return False, f"expected {lo:g}..{hi:g}"
        return True, number
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return False, "expected an integer"
        lo, hi = _LIMITS[key]
        return (True, value) if lo <= value <= hi else (False, f"expected {lo}..{hi}")
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return True, tuple(value)
        return False, "expected a list of strings"
    return False, "unsupported type"


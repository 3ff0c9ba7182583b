"""Typed shapes of the language server's requests and results (docs/protocol.md), and the
layering of its configuration. Pure: no pygls, no model; the server converts at the edge.

Arguments arrive as JSON values; each ``parse`` checks them and raises :class:`ParamsError`
(answered as JSON-RPC InvalidParams) with a sentence that names the command and the field.
Unknown fields are ignored, so that a newer plugin can talk to an older server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .config import Settings
from .config import settings_schema as engine_schema

SNIPPET_LINES = 12  # lines of a chunk sent back as its snippet
MAX_K = 1000


class ParamsError(ValueError):
    """Malformed request arguments; ``str(err)`` is the whole message for the user."""


# ----------------------------------------------------------------------------- helpers


def _one_object(command: str, args: Sequence[Any] | None, optional: bool = False) -> dict:
    args = list(args or [])
    if not args and optional:
        return {}
    if len(args) != 1 or not isinstance(args[0], dict):
        got = "no arguments" if not args else (
            f"{len(args)} arguments" if len(args) != 1 else type(args[0]).__name__)
        raise ParamsError(f"{command}: expected one argument, an object, got {got}")
    return args[0]


def _opt_str(command: str, obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParamsError(f"{command}: {key!r} must be a string, got {value!r}")
    return value


def _req_str(command: str, obj: Mapping[str, Any], key: str) -> str:
    value = _opt_str(command, obj, key)
    if value is None or not value.strip():
        raise ParamsError(f"{command}: {key!r} is required (a non-empty string)")
    return value


def _opt_int(command: str, obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParamsError(f"{command}: {key!r} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _opt_bool(command: str, obj: Mapping[str, Any], key: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ParamsError(f"{command}: {key!r} must be true or false, got {value!r}")
    return value


def _str_list(command: str, obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ParamsError(f"{command}: {key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Position:
    line: int  # 0-based
    character: int  # UTF-16 code units (unused: chunks are whole lines)

    @classmethod
    def parse(cls, command: str, key: str, value: Any) -> Position:
        if not isinstance(value, dict):
            raise ParamsError(f"{command}: {key!r} must be an object {{line, character}}, "
                              f"got {value!r}")
        line, char = value.get("line"), value.get("character", 0)
        for name, v in (("line", line), ("character", char)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ParamsError(f"{command}: {key}.{name} must be an integer >= 0, got {v!r}")
        return cls(line, char)


@dataclass(frozen=True)
class LineRange:
    start: Position
    end: Position  # exclusive, LSP style

    @classmethod
    def parse(cls, command: str, key: str, value: Any) -> LineRange:
        if not isinstance(value, dict):
            raise ParamsError(f"{command}: {key!r} must be an object {{start, end}}, got {value!r}")
        start = Position.parse(command, f"{key}.start", value.get("start"))
        end = Position.parse(command, f"{key}.end", value.get("end"))
        if (end.line, end.character) < (start.line, start.character):
            raise ParamsError(f"{command}: {key!r} ends before it starts")
        return cls(start, end)

    def lines(self) -> tuple[int, int]:
        """The 0-based inclusive lines it covers (an end at character 0 of a later line
        does not include that line)."""
        last = self.end.line
        if self.end.character == 0 and last > self.start.line:
            last -= 1
        return self.start.line, last


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Filters:
    k: int | None = None  # None: the `limit` setting
    languages: tuple[str, ...] = ()
    path_glob: str | None = None
    folder: str | None = None  # a workspace folder URI, or None for all

    @classmethod
    def parse(cls, command: str, obj: Mapping[str, Any]) -> Filters:
        return cls(k=_opt_int(command, obj, "k", 1, MAX_K),
                   languages=_str_list(command, obj, "languages"),
                   path_glob=_opt_str(command, obj, "pathGlob") or None,
                   folder=_opt_str(command, obj, "folder") or None)


@dataclass(frozen=True)
class SearchArgs:
    COMMAND = "mose.search"

    query: str
    kind: str = "text"  # "text" | "code"
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def parse(cls, args: Sequence[Any] | None) -> SearchArgs:
        c = cls.COMMAND
        obj = _one_object(c, args)
        kind = obj.get("kind", "text")
        if kind not in ("text", "code"):
            raise ParamsError(f"{c}: 'kind' must be \"text\" or \"code\", got {kind!r}")
        return cls(_req_str(c, obj, "query"), kind, Filters.parse(c, obj))


@dataclass(frozen=True)
class SimilarArgs:
    COMMAND = "mose.similar"

    uri: str
    position: Position | None = None
    range: LineRange | None = None
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def parse(cls, args: Sequence[Any] | None) -> SimilarArgs:
        c = cls.COMMAND
        obj = _one_object(c, args)
        uri = _req_str(c, obj, "uri")
        position = None if obj.get("position") is None else \
            Position.parse(c, "position", obj["position"])
        rng = None if obj.get("range") is None else LineRange.parse(c, "range", obj["range"])
        return cls(uri, position, rng, Filters.parse(c, obj))


@dataclass(frozen=True)
class StatusArgs:
    COMMAND = "mose.status"

    folder: str | None = None

    @classmethod
    def parse(cls, args: Sequence[Any] | None) -> StatusArgs:
        obj = _one_object(cls.COMMAND, args, optional=True)
        return cls(_opt_str(cls.COMMAND, obj, "folder") or None)


@dataclass(frozen=True)
class ReindexArgs:
    COMMAND = "mose.reindex"

    folder: str | None = None
    rebuild: bool = False

    @classmethod
    def parse(cls, args: Sequence[Any] | None) -> ReindexArgs:
        obj = _one_object(cls.COMMAND, args, optional=True)
        return cls(_opt_str(cls.COMMAND, obj, "folder") or None,
                   _opt_bool(cls.COMMAND, obj, "rebuild", False))


COMMANDS = (SearchArgs.COMMAND, SimilarArgs.COMMAND, StatusArgs.COMMAND, ReindexArgs.COMMAND)
DOCUMENT_INDEXED = "mose/documentIndexed"  # server -> client notification (opt-in)
#: The initialization option (in ``initializationOptions.mose``) and the client capability
#: (``capabilities.experimental.mose``) with which a client asks for ``mose/*`` notifications.
NOTIFICATIONS_OPTION = "notifications"


def notifications_wanted(init_options: Any, capabilities: Any = None) -> bool:
    """Whether the client opted in to the server's ``mose/*`` notifications, with
    ``initializationOptions: {"mose": {"notifications": true}}`` or the capability
    ``experimental: {"mose": {"notifications": true}}``. Without it the server sends only
    what the LSP specification defines."""
    options = section(init_options)
    if isinstance(options, dict) and options.get(NOTIFICATIONS_OPTION) is True:
        return True
    experimental = getattr(capabilities, "experimental", None)
    mose = experimental.get("mose") if isinstance(experimental, dict) else None
    return isinstance(mose, dict) and mose.get(NOTIFICATIONS_OPTION) is True


# ----------------------------------------------------------------------------- results


def lsp_range(start_line: int, end_line: int) -> dict[str, Any]:
    """Whole lines ``start_line..end_line`` (inclusive) as an end-exclusive LSP range."""
    return {"start": {"line": start_line, "character": 0},
            "end": {"line": end_line + 1, "character": 0}}


_NOT_DEFINITION = ("@", "#", "//", "/*", "*", "--", ";")  # decorators and comment lines


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def definition_span(text: str, symbol: str | None, start_line: int) -> tuple[int, int, int]:
    """Where a chunk's symbol is named: ``(line, start, end)``, the line 0-based in the file
    and the characters in UTF-16 code units (LSP's default encoding).

    A chunk starts at its decorators and leading comments; editors should land on the
    definition, so this is the first other line that names the symbol's last part (``parse`` of
    ``Parser.parse``), or the first such line that is code at all when none does."""
    lines = text.splitlines()
    name = re.split(r"\.|::|#", symbol)[-1] if symbol else ""
    pattern = re.compile(rf"(?<![\w$]){re.escape(name)}(?![\w$])") if name else None
    first_code: tuple[int, int, int] | None = None
    for n, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(_NOT_DEFINITION):
            continue
        if first_code is None:
            indent = len(line) - len(line.lstrip())
            first_code = (start_line + n, _utf16(line[:indent]), _utf16(line.rstrip()))
        if pattern is not None and (m := pattern.search(line)):
            return start_line + n, _utf16(line[:m.start()]), _utf16(line[:m.end()])
    return first_code or (start_line, 0, 0)


@dataclass(frozen=True)
class Result:
    uri: str
    path: str  # folder-relative
    folder: str  # folder URI
    start_line: int  # 0-based
    end_line: int  # 0-based, inclusive
    symbol: str | None
    kind: str | None
    language: str | None
    score: float
    exit: int
    snippet: str
    selection: tuple[int, int, int] | None = None  # definition_span: the symbol's name

    def selection_range(self) -> dict[str, Any]:
        """The symbol's name (where an editor should put the cursor) as an LSP range."""
        line, start, end = self.selection or (self.start_line, 0, 0)
        return {"start": {"line": line, "character": start},
                "end": {"line": line, "character": end}}

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "range": lsp_range(self.start_line, self.end_line),
                "selectionRange": self.selection_range(),
                "path": self.path, "folder": self.folder, "symbol": self.symbol,
                "kind": self.kind, "language": self.language, "score": round(self.score, 6),
                "exit": self.exit, "snippet": self.snippet}


def snippet(text: str, lines: int = SNIPPET_LINES) -> str:
    return "\n".join(text.splitlines()[:lines])


@dataclass(frozen=True)
class SearchResponse:
    results: tuple[Result, ...]
    incomplete: tuple[str, ...] = ()  # folders whose first index is still being built

    def to_json(self) -> dict[str, Any]:
        return {"results": [r.to_json() for r in self.results],
                "incomplete": list(self.incomplete)}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def camel_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {camel(k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------- configuration


WATCH_MODES = ("auto", "watchdog", "client", "off")


@dataclass(frozen=True)
class ServerOptions:
    """Options of the server itself (the engine's live in :class:`Settings`)."""

    #: How changes on disk are seen: "auto" (the client's file watcher when it can register one
    #: dynamically, else watchdog), "watchdog", "client", or "off" (only mose.reindex).
    watcher: str = "auto"


def settings_schema() -> dict[str, dict[str, Any]]:
    """Every client setting of the server (the engine's and the server's own), camelCase, with
    type, default and bounds (see :func:`mose_lsp.config.settings_schema`)."""
    schema = engine_schema()
    schema["watcher"] = {"type": "string", "default": ServerOptions().watcher,
                         "enum": list(WATCH_MODES)}
    return schema


#: Settings whose change closes and reopens every folder's index.
REOPEN_KEYS = ("model", "index_dir", "threads", "max_file_bytes", "exclude", "secret_patterns",
               "use_gitignore")


@dataclass(frozen=True)
class Config:
    settings: Settings
    options: ServerOptions
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = {camel(f.name): getattr(self.settings, f.name) for f in fields(Settings)}
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        data["watcher"] = self.options.watcher
        return data


def section(data: Any) -> Any:
    """The ``mose`` section of initializationOptions or a settings push: accepts either
    ``{"mose": {...}}`` or the settings object itself."""
    if isinstance(data, dict) and isinstance(data.get("mose"), dict):
        return data["mose"]
    return data


def layer(data: Any, base: Config, origin: str) -> Config:
    """Apply one layer of settings (a JSON object, or None for nothing) on top of ``base``.

    Invalid values keep the value of ``base``; each problem becomes a warning that says where
    it came from.
    """
    if data is None:
        return base
    if not isinstance(data, dict):
        return Config(base.settings, base.options, base.warnings + (
            f"{origin}: settings must be an object, got {type(data).__name__}; ignored",))
    rest = dict(data)
    if origin == "initializationOptions":
        rest.pop(NOTIFICATIONS_OPTION, None)  # a client's declaration, not a setting
    warnings: list[str] = []
    options = base.options
    if "watcher" in rest:
        value = rest.pop("watcher")
        if value is None:
            options = ServerOptions()
        elif value in WATCH_MODES:
            options = ServerOptions(watcher=value)
        else:
            warnings.append(f"setting 'watcher'={value!r} is invalid (expected one of "
                            f"{', '.join(WATCH_MODES)}); using {base.options.watcher!r}")
    settings, more = Settings.from_dict(rest, base.settings)
    warnings += more
    return Config(settings, options, base.warnings + tuple(f"{origin}: {w}" for w in warnings))


def resolve_config(base: Settings, init_options: Any = None, client: Any = None) -> Config:
    """The effective configuration: command line < initializationOptions < client settings."""
    config = Config(base, ServerOptions())
    config = layer(section(init_options), config, "initializationOptions")
    return layer(section(client), config, "client settings")


def reopen_needed(old: Settings, new: Settings) -> bool:
    return any(getattr(old, k) != getattr(new, k) for k in REOPEN_KEYS)

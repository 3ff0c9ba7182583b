"""Plain conversion of the command line's values, without pydantic.

Recent typer versions convert every option value with a pydantic ``TypeAdapter`` built on
first use; importing pydantic and building one adapter per option costs a one-shot command
more than 100 ms. The ``mose`` commands take only plain values (text, whole numbers with
bounds, flags, paths, repeated text), which convert directly. :func:`install` gives each
typer parameter a converter that handles such values itself and hands everything else (a value it
cannot convert, one out of bounds, a type it does not know) to typer's own conversion, so
results and error messages stay typer's. With a typer that has no such layer it does nothing.

This wraps a private typer method: ``tests/test_cli_coercion.py`` holds its results to typer's
and checks that a one-shot command loads no pydantic, so a typer release that changes the
internals fails there first. Drop this module once typer converts plain values without
building pydantic adapters (or imports pydantic only for the types that need it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args, get_origin

_INTEGER = re.compile(r"[+-]?[0-9]+")


def install() -> None:
    """Let typer's parameters convert plain values with the plain converter (once per
    process; typer builds a parameter's converter on first use, the help option's too)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer.core import _TyperParameter
    except ImportError:  # a typer without the pydantic conversion layer
        return
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if original is None or getattr(original, "mose_plain", False):
        return
    plain = _plain_class(RuntimeParam, build_runtime_param)

    def get_runtime_param(self):
        if getattr(self, "_runtime_param", None) is None:
            descriptor = getattr(self, "type_descriptor", None)
            if (descriptor is not None and descriptor.file_annotation is None
                    and _kind(descriptor.annotation, descriptor.parameter_info) is not None):
                self._runtime_param = plain(annotation=descriptor.annotation,
                                            parameter_info=descriptor.parameter_info,
                                            descriptor=descriptor)
        return original(self)

    get_runtime_param.mose_plain = True
    get_runtime_param.__wrapped__ = original
    _TyperParameter.get_runtime_param = get_runtime_param


def _kind(annotation: Any, info: Any) -> str | None:
    """Which plain conversion fits the annotation and its option settings, if any."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
    if annotation is str:
        return "str"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return None if getattr(info, "clamp", False) else "int"
    if annotation is Path:
        path_checks = ("exists", "resolve_path", "allow_dash", "path_type", "writable")
        if any(getattr(info, name, None) for name in path_checks):
            return None
        if getattr(info, "file_okay", True) is False or getattr(info, "dir_okay", True) is False:
            return None
        return "path"
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return "str_list"
    return None


def _plain_class(runtime_param: type, build_runtime_param: Any) -> type:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class PlainRuntimeParam(runtime_param):  # type: ignore[misc, valid-type]
        descriptor: Any = None
        _typer: list = field(default_factory=list, compare=False, repr=False)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = _kind(self.annotation, self.parameter_info)
            done, result = _convert(kind, value, self.parameter_info)
            if done:
                return result
            if not self._typer:  # typer's own conversion (and its error message)
                self._typer.append(build_runtime_param(self.descriptor))
            return self._typer[0]._coerce_value(value, param=param, ctx=ctx)

    return PlainRuntimeParam


def _convert(kind: str | None, value: Any, info: Any) -> tuple[bool, Any]:
    """(True, converted value), or (False, None) when typer's conversion should decide."""
    if kind == "str" and isinstance(value, str):
        return True, value
    if kind == "bool" and isinstance(value, bool):
        return True, value
    if kind == "path" and isinstance(value, (str, Path)):
        if getattr(info, "readable", False) and os.path.exists(value) and not os.access(
                value, os.R_OK):
            return False, None  # typer says that it is not readable
        return True, Path(value)
    if kind == "str_list" and isinstance(value, (list, tuple)) and all(
            isinstance(v, str) for v in value):
        return True, list(value)
    if kind == "int":
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            number = int(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            return False, None
        low, high = getattr(info, "min", None), getattr(info, "max", None)
        if (low is not None and number < low) or (high is not None and number > high):
            return False, None  # out of bounds: typer says so, in its words
        return True, number
    return False, None

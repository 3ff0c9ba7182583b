"""Which language a file is written in: ``detect_language`` maps a path (extension, a few
well-known file names) and, for files without a known extension, a ``#!`` line to a language
id, or ``None`` for files mose does not index.

Kept apart from :mod:`mose_lsp.languages` (the tree-sitter specs) so that deciding which files
to read needs no parser library: the walk, the indexer's file gate and the editors' file lists
use only this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath, PurePosixPath

__all__ = ["PROSE_LANGUAGES", "TEXT_LANGUAGES", "detect_language"]

TEXT_LANGUAGES: frozenset[str] = frozenset(
    {
        "markdown", "rst", "text", "shell", "powershell", "batch", "yaml", "toml", "json",
        "ini", "xml", "html", "css", "scss", "less", "sql", "graphql", "protobuf", "kotlin",
        "scala", "swift", "dart", "objc", "r", "julia", "perl", "haskell", "ocaml", "elixir",
        "erlang", "clojure", "zig", "nim", "groovy", "vue", "svelte", "terraform",
        "dockerfile", "makefile", "cmake", "latex",
    }
)  # fmt: skip

# Natural-language text: long lines there are paragraphs, not minified code.
PROSE_LANGUAGES: frozenset[str] = frozenset({"markdown", "rst", "text", "latex"})

_EXTENSIONS: Mapping[str, str] = {
    # parsed
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp", ".inl": "cpp", ".tpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby", ".ru": "ruby",
    ".php": "php", ".phtml": "php",
    ".lua": "lua",
    # text only
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".rst": "rst", ".txt": "text", ".adoc": "text",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".ksh": "shell",
    ".ps1": "powershell", ".psm1": "powershell", ".bat": "batch", ".cmd": "batch",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
    ".json": "json", ".jsonc": "json", ".json5": "json",
    ".ini": "ini", ".cfg": "ini", ".conf": "ini",
    ".xml": "xml", ".xsd": "xml", ".xsl": "xml", ".csproj": "xml", ".plist": "xml",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".css": "css", ".scss": "scss", ".sass": "scss", ".less": "less",
    ".sql": "sql", ".graphql": "graphql", ".gql": "graphql", ".proto": "protobuf",
    ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala", ".sc": "scala", ".swift": "swift",
    ".dart": "dart", ".m": "objc", ".mm": "objc", ".r": "r", ".jl": "julia",
    ".pl": "perl", ".pm": "perl", ".hs": "haskell", ".ml": "ocaml", ".mli": "ocaml",
    ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure", ".cljs": "clojure",
    ".zig": "zig", ".nim": "nim", ".groovy": "groovy", ".gradle": "groovy",
    ".vue": "vue", ".svelte": "svelte", ".tf": "terraform", ".cmake": "cmake", ".tex": "latex",
}  # fmt: skip

_FILE_NAMES: Mapping[str, str] = {
    "Rakefile": "ruby", "Gemfile": "ruby", "Guardfile": "ruby", "Vagrantfile": "ruby",
    "Podfile": "ruby", "Brewfile": "ruby",
    "Dockerfile": "dockerfile", "Containerfile": "dockerfile",
    "Makefile": "makefile", "GNUmakefile": "makefile", "makefile": "makefile",
    "CMakeLists.txt": "cmake", "Jenkinsfile": "groovy",
    ".bashrc": "shell", ".bash_profile": "shell", ".zshrc": "shell", ".profile": "shell",
    "README": "text", "LICENSE": "text", "COPYING": "text", "NOTICE": "text",
    "AUTHORS": "text", "CHANGELOG": "text", "CONTRIBUTING": "text",
}  # fmt: skip

# Interpreter in a "#!" line -> language.
_SHEBANGS: Mapping[str, str] = {
    "python": "python", "node": "javascript", "nodejs": "javascript", "deno": "typescript",
    "ts-node": "typescript", "bun": "javascript", "ruby": "ruby", "php": "php", "lua": "lua",
    "luajit": "lua", "sh": "shell", "bash": "shell", "zsh": "shell", "dash": "shell",
    "ksh": "shell", "perl": "perl", "Rscript": "r",
}  # fmt: skip

_SHEBANG_RE = re.compile(r"#!\s*(\S+)(?:\s+(?:-\S+\s+)*(\S+))?")
_CPP_HEADER_RE = re.compile(
    r"^\s*(?:class\s+\w+[^;]*$|namespace\b|template\s*<|(?:public|private|protected)\s*:)"
    r"|\bstd::",
    re.MULTILINE,
)


def detect_language(path: str | PurePath, head: str | bytes | None = None) -> str | None:
    """The language id of ``path``, or None if we do not index such files.

    ``head`` (the first bytes or characters of the file, optional) decides files without a
    known extension by their ``#!`` line, and C++ headers named ``.h``.
    """
    name = PurePosixPath(str(path).replace("\\", "/")).name
    if name in _FILE_NAMES:
        return _FILE_NAMES[name]
    lower = name.lower()
    suffix = lower[lower.rfind(".") :] if "." in lower[1:] else ""
    lang = _EXTENSIONS.get(suffix)
    if isinstance(head, bytes):
        head = head[:8192].decode("utf-8", errors="replace")
    if lang == "c" and head and _CPP_HEADER_RE.search(head[:8192]):
        return "cpp"
    if lang is None and head and head.startswith("#!"):
        return _shebang_language(head[: head.find("\n")] if "\n" in head else head)
    return lang


def _shebang_language(line: str) -> str | None:
    match = _SHEBANG_RE.match(line.strip())
    if match is None:
        return None
    program = match.group(1).rsplit("/", 1)[-1]
    if program == "env" and match.group(2):
        program = match.group(2).rsplit("/", 1)[-1]
    program = program.rstrip("0123456789.")  # python3.12 -> python
    return _SHEBANGS.get(program)

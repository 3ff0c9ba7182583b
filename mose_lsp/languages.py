"""Which language a file is written in, and how each parsed language is cut into units.

Two kinds of language id:

* parsed languages (``PARSED_LANGUAGES``): a tree-sitter grammar from its own PyPI wheel
  (``tree-sitter-python`` ...; never a grammar downloaded at run time) and a
  :class:`LanguageSpec` saying which syntax nodes form chunks and how they are named;
* text-only languages (``TEXT_LANGUAGES``): indexed by the fallback window splitter.

``detect_language`` maps a path (extension, a few well-known file names) and, for files
without a known extension, a ``#!`` line to an id, or ``None`` for files we do not index.

The node types in the specs were checked against the grammars' real output (tree-sitter
0.26 with the wheels pinned in pyproject.toml); ``tests/test_chunker.py`` parses real-style
fixtures in every language and asserts the symbols found.

Grammar objects (``Language``, ``Query``) are immutable and cached process-wide; a
``Parser`` is not thread-safe, so each thread gets its own cached parser.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

from tree_sitter import Language, Node, Parser, Query

from .filetypes import PROSE_LANGUAGES, TEXT_LANGUAGES, detect_language

__all__ = [
    "CLASS_LIKE_KINDS",
    "PARSED_LANGUAGES",
    "PROSE_LANGUAGES",
    "TEXT_LANGUAGES",
    "LanguageSpec",
    "Name",
    "detect_language",
    "get_parser",
    "get_query",
    "language_spec",
]


class Name(NamedTuple):
    """The name a unit declares, as written (dots between parts: ``Foo.bar``)."""

    text: str
    # True when the name itself says the unit is a method (a Go receiver, C++ ``Foo::bar``
    # defined outside its class, Lua ``function M:bar``).
    method: bool = False
    # What nested units are qualified with, when not ``text``: a Rust ``impl Display for
    # Point`` is named "Display for Point" and its methods "Point.fmt".
    scope: str | None = None


Namer = Callable[[Node], "Name | None"]

# Unit kinds inside which a "function" is a "method" (and whose names qualify nested units).
CLASS_LIKE_KINDS = frozenset(
    {"class", "interface", "struct", "enum", "trait", "impl", "record", "union"}
)


@dataclass(frozen=True)
class LanguageSpec:
    """How one parsed language is cut into units.

    ``query`` is a tree-sitter query whose capture names are chunk kinds ("function",
    "method", "class", ...): every captured node is a unit. When a node is captured by more
    than one pattern, the first pattern wins.
    """

    id: str
    module: str  # the grammar wheel's import name
    factory: str  # the function in ``module`` that returns the grammar
    query: str
    # Parents that belong to the unit they wrap (decorators, ``export``, ``template<...>``,
    # a Go ``type`` keyword): wrapper type -> child types that do not count when checking
    # that the wrapper holds just this one unit.
    wrappers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Sibling nodes directly above a unit that belong to it (doc comments, attributes,
    # decorators that the grammar keeps outside the unit's node).
    prefixes: frozenset[str] = frozenset({"comment"})
    namer: Namer | None = None  # how a unit is named; default: its ``name`` field


# --------------------------------------------------------------------------------------
# Naming helpers: each takes a captured unit node and returns its Name (or None if anonymous)


def _text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return " ".join(node.text.decode("utf-8", errors="replace").split())


def _field_name(node: Node) -> Name | None:
    text = _text(node.child_by_field_name("name"))
    return Name(text) if text else None


def _dotted(text: str) -> str:
    """``A::B`` (C++, Ruby, Rust paths) and ``M:f`` (Lua) -> ``A.B`` / ``M.f``."""
    return text.replace("::", ".").replace(":", ".")


def _js_name(node: Node) -> Name | None:
    if node.type == "variable_declarator":
        return _field_name(node)
    if node.type == "assignment_expression":  # obj.method = function () {...}
        text = _text(node.child_by_field_name("left"))
        return Name(text) if text else None
    if node.type == "field_definition":  # JS class field: handle = () => {...}
        text = _text(node.child_by_field_name("property"))
        return Name(text) if text else None
    if node.type in ("module", "internal_module"):  # TS namespace / declare module "x"
        text = _text(node.child_by_field_name("name")).strip("\"'`")
        return Name(text) if text else None
    return _field_name(node)


_C_DECLARATOR_WRAPPERS = frozenset(
    {
        "pointer_declarator",
        "reference_declarator",
        "function_declarator",
        "parenthesized_declarator",
        "attributed_declarator",
        "array_declarator",
    }
)


def _c_declarator_name(node: Node) -> Name | None:
    """A C/C++ function's name: follow ``declarator`` through pointers and parentheses."""
    decl = node.child_by_field_name("declarator")
    while decl is not None and decl.type in _C_DECLARATOR_WRAPPERS:
        inner = decl.child_by_field_name("declarator")
        if decl.type == "function_declarator" and inner is not None and inner.type == decl.type:
            decl = inner  # a name made by a macro, TRANS(Open)(...): keep "TRANS(Open)"
            break
        decl = inner if inner is not None else (decl.named_children or [None])[0]
    if decl is None:
        return None
    text = _text(decl)
    if not text:
        return None
    return Name(_dotted(text), method=decl.type == "qualified_identifier")


def _c_name(node: Node) -> Name | None:
    if node.type == "function_definition":
        return _c_declarator_name(node)
    named = _field_name(node)
    if named is not None:
        return named
    parent = node.parent  # typedef struct { ... } point_t;
    if parent is not None and parent.type == "type_definition":
        text = _text(parent.child_by_field_name("declarator"))
        return Name(text) if text else None
    return None


def _go_type_base(node: Node | None) -> str:
    """The type name in a Go receiver: ``*List[T]`` -> ``List``."""
    while node is not None and node.type in ("pointer_type", "generic_type", "parenthesized_type"):
        inner = node.child_by_field_name("type")
        node = inner if inner is not None else (node.named_children or [None])[0]
    return _text(node)


def _go_name(node: Node) -> Name | None:
    named = _field_name(node)
    if named is None or node.type != "method_declaration":
        return named
    receiver = node.child_by_field_name("receiver")
    params = [
        c for c in (receiver.named_children if receiver else []) if c.type.endswith("declaration")
    ]
    base = _go_type_base(params[0].child_by_field_name("type")) if params else ""
    return Name(f"{base}.{named.text}" if base else named.text, method=True)


def _rust_type_base(node: Node | None) -> str:
    """The type an ``impl`` is for: ``Wrapper<T>`` -> ``Wrapper``, ``&'a str`` -> ``str``."""
    while node is not None and node.type in ("generic_type", "reference_type", "pointer_type"):
        inner = node.child_by_field_name("type")
        node = inner if inner is not None else (node.named_children or [None])[-1]
    if node is not None and node.type == "scoped_type_identifier":
        node = node.child_by_field_name("name")
    return _text(node)


def _rust_name(node: Node) -> Name | None:
    if node.type == "impl_item":
        text = _rust_type_base(node.child_by_field_name("type"))
        if not text:
            return None
        trait = _rust_type_base(node.child_by_field_name("trait"))
        return Name(f"{trait} for {text}", scope=text) if trait else Name(text)
    return _field_name(node)


def _ruby_name(node: Node) -> Name | None:
    named = _field_name(node)
    if named is None:
        return None
    return Name(_dotted(named.text))


def _lua_name(node: Node) -> Name | None:
    if node.type == "assignment_statement":  # M.handler = function (...) ... end
        targets = node.named_children[0] if node.named_children else None
        first = targets.named_children[0] if targets and targets.named_children else None
        text = _text(first)
        return Name(text) if text else None
    name = node.child_by_field_name("name")
    text = _text(name)
    if not text:
        return None
    return Name(_dotted(text), method=name is not None and name.type == "method_index_expression")


# --------------------------------------------------------------------------------------
# The specs

_JS_QUERY = """
(function_declaration) @function
(generator_function_declaration) @function
(class_declaration) @class
(method_definition) @method
(field_definition value: [(arrow_function) (function_expression)]) @method
(variable_declarator
  name: (identifier)
  value: [(arrow_function) (function_expression) (generator_function)]) @function
(assignment_expression
  left: [(member_expression) (identifier)]
  right: [(arrow_function) (function_expression) (generator_function)]) @function
"""

_TS_QUERY = """
(function_declaration) @function
(generator_function_declaration) @function
(class_declaration) @class
(abstract_class_declaration) @class
(method_definition) @method
(public_field_definition value: [(arrow_function) (function_expression)]) @method
(variable_declarator
  name: (identifier)
  value: [(arrow_function) (function_expression) (generator_function)]) @function
(assignment_expression
  left: [(member_expression) (identifier)]
  right: [(arrow_function) (function_expression) (generator_function)]) @function
(interface_declaration) @interface
(enum_declaration) @enum
(type_alias_declaration) @type
(internal_module) @module
(module) @module
"""

_JS_WRAPPERS: Mapping[str, frozenset[str]] = {
    "export_statement": frozenset({"decorator", "comment"}),
    "lexical_declaration": frozenset({"comment"}),
    "variable_declaration": frozenset({"comment"}),
    "expression_statement": frozenset({"comment"}),
    "ambient_declaration": frozenset({"comment"}),
}

_C_QUERY = """
(function_definition) @function
(struct_specifier body: (_)) @struct
(union_specifier body: (_)) @union
(enum_specifier body: (_)) @enum
"""

_C_TYPEDEF_IGNORED = frozenset(
    {
        "type_identifier",
        "primitive_type",
        "pointer_declarator",
        "array_declarator",
        "function_declarator",
        "type_qualifier",
        "comment",
    }
)

_SPECS: dict[str, LanguageSpec] = {
    spec.id: spec
    for spec in (
        LanguageSpec(
            id="python",
            module="tree_sitter_python",
            factory="language",
            query="(function_definition) @function\n(class_definition) @class\n",
            wrappers={"decorated_definition": frozenset({"decorator", "comment"})},
        ),
        LanguageSpec(
            id="javascript",
            module="tree_sitter_javascript",
            factory="language",
            query=_JS_QUERY,
            wrappers=_JS_WRAPPERS,
            prefixes=frozenset({"comment", "decorator"}),
            namer=_js_name,
        ),
        LanguageSpec(
            id="typescript",
            module="tree_sitter_typescript",
            factory="language_typescript",
            query=_TS_QUERY,
            wrappers=_JS_WRAPPERS,
            prefixes=frozenset({"comment", "decorator"}),
            namer=_js_name,
        ),
        LanguageSpec(
            id="tsx",
            module="tree_sitter_typescript",
            factory="language_tsx",
            query=_TS_QUERY,
            wrappers=_JS_WRAPPERS,
            prefixes=frozenset({"comment", "decorator"}),
            namer=_js_name,
        ),
        LanguageSpec(
            id="go",
            module="tree_sitter_go",
            factory="language",
            query="""
(function_declaration) @function
(method_declaration) @method
(type_spec type: (struct_type)) @struct
(type_spec type: (interface_type)) @interface
(type_spec) @type
(type_alias) @type
""",
            wrappers={"type_declaration": frozenset({"comment"})},
            namer=_go_name,
        ),
        LanguageSpec(
            id="rust",
            module="tree_sitter_rust",
            factory="language",
            query="""
(function_item) @function
(struct_item) @struct
(enum_item) @enum
(union_item) @union
(trait_item) @trait
(impl_item) @impl
(mod_item body: (_)) @module
(macro_definition) @macro
""",
            prefixes=frozenset({"line_comment", "block_comment", "attribute_item"}),
            namer=_rust_name,
        ),
        LanguageSpec(
            id="java",
            module="tree_sitter_java",
            factory="language",
            query="""
(method_declaration) @method
(constructor_declaration) @method
(compact_constructor_declaration) @method
(class_declaration) @class
(interface_declaration) @interface
(annotation_type_declaration) @interface
(enum_declaration) @enum
(record_declaration) @record
""",
            prefixes=frozenset({"line_comment", "block_comment"}),
        ),
        LanguageSpec(
            id="c",
            module="tree_sitter_c",
            factory="language",
            query=_C_QUERY,
            wrappers={"type_definition": _C_TYPEDEF_IGNORED},
            namer=_c_name,
        ),
        LanguageSpec(
            id="cpp",
            module="tree_sitter_cpp",
            factory="language",
            query=_C_QUERY + "(class_specifier body: (_)) @class\n",
            wrappers={
                "type_definition": _C_TYPEDEF_IGNORED,
                "template_declaration": frozenset({"template_parameter_list", "comment"}),
            },
            namer=_c_name,
        ),
        LanguageSpec(
            id="csharp",
            module="tree_sitter_c_sharp",
            factory="language",
            query="""
(class_declaration) @class
(struct_declaration) @struct
(interface_declaration) @interface
(enum_declaration) @enum
(record_declaration) @record
(method_declaration) @method
(constructor_declaration) @method
(destructor_declaration) @method
(local_function_statement) @function
(property_declaration) @property
""",
        ),
        LanguageSpec(
            id="ruby",
            module="tree_sitter_ruby",
            factory="language",
            query="""
(method) @function
(singleton_method) @method
(class) @class
(module) @module
""",
            namer=_ruby_name,
        ),
        LanguageSpec(
            id="php",
            module="tree_sitter_php",
            factory="language_php",
            query="""
(function_definition) @function
(method_declaration) @method
(class_declaration) @class
(interface_declaration) @interface
(trait_declaration) @trait
(enum_declaration) @enum
""",
        ),
        LanguageSpec(
            id="lua",
            module="tree_sitter_lua",
            factory="language",
            query="""
(function_declaration) @function
(assignment_statement
  (variable_list . name: (_))
  (expression_list . value: (function_definition))) @function
""",
            wrappers={"variable_declaration": frozenset({"comment"})},
            namer=_lua_name,
        ),
    )
}

PARSED_LANGUAGES: frozenset[str] = frozenset(_SPECS)

def language_spec(lang: str) -> LanguageSpec | None:
    """The parsing spec of a parsed language id, or None for text-only and unknown ids."""
    return _SPECS.get(lang)


@cache
def _language(lang: str) -> Language:
    spec = _SPECS[lang]
    module = importlib.import_module(spec.module)
    return Language(getattr(module, spec.factory)())


@cache
def get_query(lang: str) -> Query:
    """The compiled unit query of a parsed language (immutable; shared by all threads)."""
    return Query(_language(lang), _SPECS[lang].query)


_local = threading.local()


def get_parser(lang: str) -> Parser:
    """This thread's parser for a parsed language (created on first use, then reused)."""
    parsers: dict[str, Parser] | None = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    parser = parsers.get(lang)
    if parser is None:
        parser = parsers[lang] = Parser(_language(lang))
    return parser

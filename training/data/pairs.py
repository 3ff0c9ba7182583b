"""Docstring -> function pairs mined from source trees, CodeSearchNet style, with tree-sitter.

For every function that carries documentation (a Python docstring; JSDoc/Javadoc/PHP docblock
``/** */``; Go ``//`` and Ruby ``#`` comment blocks; Rust and C# ``///``; Lua ``--``; the comment
above a C/C++ function) the miner emits:

- ``docstring``: query = the first paragraph of the documentation, cleaned (tags such as
  ``@param``/``:param``, sections such as ``Args:``, markup and links removed; 3+ words);
  code = the function with its documentation removed (the CodeSearchNet shape);
- ``short``: query = the first sentence cut to at most ~10 words at a clause boundary, lowercased,
  sometimes prefixed with the language name (what people type in a search box); same code;
- ``with_docstring``: the short query against the function *with* its documentation (how code
  sits in a workspace, and how CoSQA's functions look).

All variants of one function share a ``group`` id: a recipe must not put two of them in one
batch (they would be false negatives for each other). Functions are dropped when trivial (short,
getters/setters, ``pass``/``...``-only, empty), tests, ``__dunder__`` methods, constructors, very
long, in generated files, or unparsable.

Records are JSONL: ``{query, code, kind: "text", lang, repo, path, symbol, variant, group,
start_line, end_line, source: {name, version}}``. Cross-language pairs (translations) use
``{query: code_a, code: code_b, kind: "code", lang_query, lang, ...}`` (``CodePair``).
"""

from __future__ import annotations

import ast
import hashlib
import html
import inspect
import json
import platform
import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from . import DataError
from .corpus import language_for_path, looks_generated, read_text_file

# ---------------------------------------------------------------------------------------------
# Parsers: the runtime's language table (mose_lsp.languages), so training mines the same units
# that the product chunks and embeds.

#: Unit kinds of the runtime's queries that are functions.
FUNCTION_KINDS = frozenset({"function", "method"})
COMMENT_TYPES = ("comment", "line_comment", "block_comment")

#: Which documentation each language reads (see ``_select_doc``).
DOC_STYLE: dict[str, str] = {
    "python": "docstring", "javascript": "doc_block", "typescript": "doc_block",
    "tsx": "doc_block", "java": "doc_block", "php": "doc_block", "php_only": "doc_block",
    "go": "comment_block", "ruby": "comment_block", "lua": "comment_block",
    "c": "comment_above", "cpp": "comment_above", "rust": "triple_slash",
    "csharp": "triple_slash",
}

CLASS_TYPES = frozenset({"class_definition", "class_declaration", "class", "module",
                         "class_specifier", "struct_specifier", "interface_declaration",
                         "trait_item", "impl_item", "enum_declaration", "record_declaration",
                         "struct_declaration", "trait_declaration", "object_declaration",
                         "abstract_class_declaration", "namespace_definition"})
#: Siblings between the documentation and the definition that do not break the link.
ATTRIBUTE_TYPES = frozenset({"attribute_item", "attribute_list", "decorator", "annotation",
                             "marker_annotation", "attribute"})


def parsed_languages() -> frozenset[str]:
    """Languages with a grammar (the runtime's parsed languages)."""
    from mose_lsp.languages import PARSED_LANGUAGES

    return PARSED_LANGUAGES


def _spec_lang(lang: str) -> str:
    return "php" if lang == "php_only" else lang


@cache
def _php_only_language():
    import tree_sitter
    import tree_sitter_php

    return tree_sitter.Language(tree_sitter_php.language_php_only())


def get_parser(lang: str):
    """A parser for ``lang`` (the runtime's per-thread parser; ``php_only`` parses PHP code
    without a ``<?php`` tag)."""
    from mose_lsp.languages import get_parser as runtime_parser

    if lang == "php_only":
        import tree_sitter

        return tree_sitter.Parser(_php_only_language())
    if lang not in parsed_languages():
        raise DataError(f"no parser for {lang!r}; parsed languages: {sorted(parsed_languages())}")
    return runtime_parser(lang)


@cache
def _unit_query(lang: str):
    import tree_sitter

    from mose_lsp.languages import get_query, language_spec

    if lang == "php_only":
        return tree_sitter.Query(_php_only_language(), language_spec("php").query)
    return get_query(lang)


@cache
def _comment_query(lang: str):
    import tree_sitter

    language = get_parser(lang).language
    patterns = [f"({t}) @c" for t in COMMENT_TYPES if language.id_for_node_kind(t, True)]
    return tree_sitter.Query(language, "\n".join(patterns))


def function_units(lang: str, root) -> list:
    """The function and method units of a tree, as the runtime's chunker finds them."""
    import tree_sitter

    caps = tree_sitter.QueryCursor(_unit_query(lang)).captures(root)
    nodes = {n.id: n for kind in FUNCTION_KINDS for n in caps.get(kind, [])}
    return sorted(nodes.values(), key=lambda n: n.start_byte)


def comment_nodes(lang: str, root) -> list:
    import tree_sitter

    return tree_sitter.QueryCursor(_comment_query(lang)).captures(root).get("c", [])


def parse_lang_for_snippet(code: str, lang: str) -> str:
    """The grammar to parse a stand-alone snippet with (PHP without ``<?php`` needs php_only)."""
    if lang == "php" and "<?php" not in code:
        return "php_only"
    return lang


def has_syntax_errors(node) -> bool:
    """True when the tree under ``node`` holds an ERROR or MISSING node."""
    if node.has_error:
        return True
    cursor = node.walk()
    while True:  # MISSING nodes are reported by has_error too; walk to be explicit and safe
        if cursor.node.is_missing or cursor.node.is_error:
            return True
        if cursor.goto_first_child() or cursor.goto_next_sibling():
            continue
        while cursor.goto_parent():
            if cursor.goto_next_sibling():
                break
        else:
            return False


def parses_cleanly(code: str, lang: str, require_function: bool = True) -> bool:
    """``code`` parses in ``lang`` without ERROR/MISSING nodes (and defines a function)."""
    grammar = parse_lang_for_snippet(code, lang)
    tree = get_parser(grammar).parse(code.encode("utf-8"))
    if has_syntax_errors(tree.root_node):
        return False
    if not require_function:
        return True
    return bool(function_units(grammar, tree.root_node))


# ---------------------------------------------------------------------------------------------
# Documentation cleaning

_STOP_LINE = re.compile(
    r"^\s*(@\w+|\\(param|tparam|returns?|retval|throws?|exception|note|see|sa|details|pre|"
    r"post|code|warning|deprecated|example)\b|"
    r":(param|parameter|arg|argument|key|keyword|type|raises?|except|exception|"
    r"returns?|rtype|yields?|ytype|var|ivar|cvar|vartype|meta)\b|>>>|```|#{1,6}\s|"
    r"(Args|Arguments|Parameters|Params|Returns?|Raises|Throws|Yields|Examples?|Notes?|"
    r"See [Aa]lso|Attributes|Usage|Warnings?|Todo|References|Keyword [Aa]rguments|Other "
    r"[Pp]arameters|Exceptions)\s*:?\s*$|-{3,}\s*$|={3,}\s*$|\.\.\s+\w+::)"
)
_NOISE = re.compile(
    r"^\s*(?:(?:todo|fixme|xxx|hack|deprecated|copyright|license|spdx|noqa|pylint|eslint|"
    r"istanbul|prettier|rubocop|nolint|auto-?generated|generated by|inherit(?:ed)?doc|see|"
    r"(?:code\s+|implementation\s+(?:is\s+)?)?(?:copied|picked|taken|adapted|ported)\s+from|"
    r"(?:for\s+)?internal\s+use|do(?:n't| not)\s+use)(?![a-z])|type:|go:generate|@|"
    r"\{@inheritdoc|-\*-)",
    re.IGNORECASE,
)
_HTML_TAG = re.compile(
    r"</?(?:p|br|b|i|u|s|em|strong|code|pre|tt|ul|ol|li|a|dl|dt|dd|table|tr|td|th|thead|tbody|"
    r"h[1-6]|blockquote|div|span|sup|sub|summary|remarks|returns|param|typeparam|c|see|seealso|"
    r"para|value|example|exception|small|big|hr|img|kbd|var|samp|cite|dfn|abbr|font|center|"
    r"inheritdoc|list|item|description|term)\b[^<>]*/?>", re.IGNORECASE,
)
_SUMMARY_TAG = re.compile(r"^\s*[@\\](brief|short|summary|description|desc)\b:?\s*")
_DIRECTIVE = re.compile(r"^\s*(go:|\+build|nolint|lint:|eslint|noinspection|rubocop:|"
                        r"clippy::|pragma\b|NOLINT)")
_LICENSE = re.compile(r"copyright|licen[cs]e|spdx-license|all rights reserved", re.IGNORECASE)


def strip_comment_markers(raw: str) -> str:
    """The text of a comment block without ``/** */``, ``*``, ``///``, ``//``, ``#``, ``--``."""
    text = raw.strip()
    if text.startswith("/*"):
        text = re.sub(r"^/\*+!?", "", text)
        text = re.sub(r"\*+/$", "", text)
        lines = [re.sub(r"^\s*\*(?!/) ?", "", ln) for ln in text.splitlines()]
        return "\n".join(ln.rstrip() for ln in lines).strip("\n")
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        for marker in ("///", "//!", "//", "---", "--", "#"):
            if ln.startswith(marker):
                ln = ln[len(marker):]
                ln = ln.removeprefix(" ")
                break
        out.append(ln.rstrip())
    return "\n".join(out)


def python_docstring_text(literal: str) -> str | None:
    """The value of a Python string literal (``ast.literal_eval``), cleaned like ``help()``."""
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, bytes):
        return None
    return inspect.cleandoc(value) if isinstance(value, str) else None


def first_paragraph(text: str) -> str:
    """Lines up to the first blank line, tag (``@param``, ``:param``), section header
    (``Args:``, ``Returns``), doctest or code fence."""
    summary = re.search(r"<summary>(.*?)</summary>", text, re.DOTALL | re.IGNORECASE)
    if summary:
        text = summary.group(1)
    lines: list[str] = []
    for line in text.splitlines():
        line = _SUMMARY_TAG.sub("", line, count=1)
        if not line.strip():
            if lines:
                break
            continue
        if _STOP_LINE.match(line):
            break
        if _DIRECTIVE.match(line):
            continue
        lines.append(line.strip())
    return " ".join(lines)


def clean_markup(text: str) -> str:
    """Remove Javadoc/JSDoc inline tags, HTML/XML, reST roles and Markdown, keeping their text."""
    t = text
    t = re.sub(r"\{@(?:link|linkplain)\s+([^}\s]+)\s+([^}]+)\}", r"\2", t)
    t = re.sub(r"\{@(?:link|linkplain|code|literal|value)\s+([^}]*)\}",
               lambda m: m.group(1).replace("#", "."), t)
    t = re.sub(r"\{@\w+[^}]*\}", "", t)
    t = re.sub(r"<(?:see|seealso)\s+(?:cref|href|langword)=\"(?:[A-Z]:)?([^\"]+)\"\s*/?>", r"\1", t)
    t = re.sub(r"<(?:paramref|typeparamref)\s+name=\"([^\"]+)\"\s*/?>", r"\1", t)
    t = _HTML_TAG.sub(" ", t)
    t = html.unescape(t)
    t = re.sub(r":[\w:.-]+:`~?(?:[^`<]*<)?([^`>]+)>?`",
               lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), t)
    t = re.sub(r"``([^`]+)``", r"\1", t)
    t = re.sub(r"`([^`]+)`_{1,2}", r"\1", t)
    t = re.sub(r"\[([^\]]+)\]\((?:[^)]+)\)", r"\1", t)  # [text](url)
    t = re.sub(r"\[`?([\w:.#()<>-]+)`?\](?!\()", r"\1", t)  # rust intra-doc [`Foo`]
    t = t.replace("`", "")
    t = re.sub(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])", r"\1", t)
    t = re.sub(r"https?://\S+", "", t)
    t = re.sub(r"\s+", " ", t).strip()
    return t.strip(" :;,-")


def word_count(text: str) -> int:
    return len(re.findall(r"[A-Za-z][\w'-]*", text))


def clean_query(doc: str, min_words: int = 3) -> str | None:
    """Documentation -> the query of a ``docstring`` pair, or None when unusable."""
    para = clean_markup(first_paragraph(doc))
    if not para or _NOISE.match(para) or word_count(para) < min_words:
        return None
    return para


_CLAUSE_WORDS = frozenset({"and", "if", "when", "using", "which", "that", "so", "because",
                           "unless", "otherwise", "where", "while", "but"})


def first_sentence(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])", text, maxsplit=1)
    return parts[0]


_TRAILING_STOP = frozenset({"a", "an", "the", "of", "with", "its", "their", "to", "in", "for",
                            "and", "or", "from", "by", "on", "at", "as", "into", "is", "are",
                            "be", "this", "that", "your", "our", "his", "her", "if", "when",
                            "per", "than", "via", "after", "before", "over", "about", "it",
                            "so", "not", "can", "will", "should", "may", "must", "which"})


def short_query(paragraph: str, max_words: int = 10, min_words: int = 3,
                name: str | None = None) -> str | None:
    """The first sentence, lowercased, cut to at most ``max_words`` words (at a clause boundary
    when there is one, never ending on a stop word), without a leading function name (Go's
    "Reverse returns ..."), the way people type searches."""
    sent = first_sentence(paragraph)
    if name and sent.split(" ", 1)[0].strip("`'\"") == name:  # exact case: Go's convention
        sent = sent.split(" ", 1)[1] if " " in sent else ""
    sent = re.sub(r"^(this|the)\s+(function|method|routine|helper|procedure)\s+", "", sent,
                  flags=re.IGNORECASE)
    sent = re.sub(r"\s*\([^)]*\)", "", sent)  # parentheticals are rarely typed
    words = sent.split()
    if len(words) > max_words:
        cut = max_words
        for j in range(max_words, max(min_words, 4) - 1, -1):
            if words[j - 1][-1:] in ",;:" or (j < len(words) and words[j].lower() in _CLAUSE_WORDS):
                cut = j
                break
        words = words[:cut]
        while len(words) > min_words and words[-1].lower().strip(",;:") in _TRAILING_STOP:
            words.pop()
    query = " ".join(words).lower().strip(" .,:;!?-")
    if word_count(query) < min_words:
        return None
    return query


# ---------------------------------------------------------------------------------------------
# Function extraction


@dataclass
class FunctionDoc:
    """A function and its documentation as found in a file."""

    name: str  # short name
    symbol: str  # qualified: Class.method
    node_type: str
    start_line: int  # 1-based, of the definition (documentation excluded)
    end_line: int
    doc: str  # documentation text, markers stripped (not yet cleaned)
    code: str  # the function without its documentation (dedented)
    code_with_doc: str  # the function with its documentation, as in the file (dedented)
    statements: int  # statements in the body (documentation excluded); -1 when unknown
    trivial_body: bool  # pass/.../NotImplemented/empty body
    is_constructor: bool
    is_property: bool
    has_error: bool


def _text(src: bytes, a: int, b: int) -> str:
    return src[a:b].decode("utf-8", "replace")


def _line_start(src: bytes, pos: int) -> int:
    return src.rfind(b"\n", 0, pos) + 1


def _dedent_from(src: bytes, start: int, end: int) -> str:
    """``src[start:end]`` with the indentation of its first line restored, then dedented."""
    ls = _line_start(src, start)
    prefix = src[ls:start]
    body = src[start:end]
    if not prefix.strip():
        body = prefix + body
    import textwrap

    return textwrap.dedent(body.decode("utf-8", "replace")).strip("\n")


def _unit_name(node, lang: str) -> str | None:
    """The unit's name as the runtime names it (``Name.text``: dotted, e.g. Go ``T.M``)."""
    from mose_lsp.languages import language_spec

    spec = language_spec(_spec_lang(lang))
    if spec is not None and spec.namer is not None:
        name = spec.namer(node)
        return name.text if name else None
    found = node.child_by_field_name("name")
    if found is None or found.text is None:
        return None
    return " ".join(found.text.decode("utf-8", "replace").split())


def _short(name: str) -> str:
    return re.split(r"::|\.|:|->|#", name.strip())[-1].strip()


def _function_node(node):
    """The function inside a unit that binds one to a name (``const f = () => ...``)."""
    for fieldname in ("value", "right"):
        inner = node.child_by_field_name(fieldname)
        if inner is not None:
            return inner
    if node.type == "assignment_statement":  # Lua: M.f = function (...) ... end
        for child in node.named_children:
            if child.type == "expression_list":
                for value in child.named_children:
                    if value.type == "function_definition":
                        return value
    return node


def _qualify(node, name: str, src: bytes) -> str:
    parts = [name]
    parent = node.parent
    while parent is not None:
        if parent.type in CLASS_TYPES:
            owner = parent.child_by_field_name("name") or parent.child_by_field_name("type")
            if owner is not None:
                owner_text = _text(src, owner.start_byte, owner.end_byte)
                parts.append(re.sub(r"<.*", "", owner_text).replace("::", "."))
        parent = parent.parent
    return ".".join(reversed(parts))


def _anchor(node, lang: str):
    """The outermost node that belongs to the unit (decorators, ``export``, ``template<>``,
    the declaration binding an arrow function), by the runtime spec's wrapper rules."""
    from mose_lsp.languages import language_spec

    spec = language_spec(_spec_lang(lang))
    wrappers = spec.wrappers if spec is not None else {}
    while node.parent is not None:
        ignored = wrappers.get(node.parent.type)
        if ignored is None:
            break
        if sum(1 for c in node.parent.named_children if c.type not in ignored) != 1:
            break
        node = node.parent
    return node


_NOT_IMPLEMENTED = re.compile(
    r"NotImplemented|UnsupportedOperationException|unimplemented!|todo!|not implemented|"
    r"panic\(\s*\"(?:todo|unimplemented)", re.IGNORECASE,
)


def _body_stats(node, lang: str, doc_stmt, src: bytes) -> tuple[int, bool]:
    body = node.child_by_field_name("body")
    if body is None:
        return -1, False
    if node.type == "arrow_function" and body.type != "statement_block":
        return 1, False  # expression body
    children = body.named_children
    if len(children) == 1 and children[0].type == "statement_list":  # Go
        children = children[0].named_children
    stmts = [c for c in children
             if c.type not in COMMENT_TYPES and (doc_stmt is None or c.id != doc_stmt.id)]
    if lang == "python":
        def trivial(s) -> bool:
            text = _text(src, s.start_byte, s.end_byte).strip()
            return (s.type == "pass_statement" or text in ("...", "return", "return None")
                    or (s.type == "raise_statement" and "NotImplemented" in text)
                    or (s.type == "expression_statement" and s.named_child_count == 1
                        and s.named_children[0].type == "string"))
        return len(stmts), all(trivial(s) for s in stmts)
    if not stmts:
        return 0, True
    if len(stmts) == 1:
        text = _text(src, stmts[0].start_byte, stmts[0].end_byte)
        if _NOT_IMPLEMENTED.search(text):
            return 1, True
    return len(stmts), False


def _comment_blocks(comments: list, src: bytes) -> dict[int, list]:
    """Own-line comments indexed by their end row (a comment after code on its line is not
    documentation of what follows)."""
    by_end: dict[int, list] = {}
    for c in comments:
        ls = _line_start(src, c.start_byte)
        if src[ls:c.start_byte].strip():
            continue
        by_end.setdefault(_last_row(c), []).append(c)
    return by_end


def _last_row(node) -> int:
    """The last row holding text of ``node`` (Rust doc comments include their newline)."""
    row, col = node.end_point
    return row - 1 if col == 0 and row > node.start_point[0] else row


def _doc_comments_above(start_row: int, by_end: dict[int, list]) -> list:
    """The contiguous own-line comments ending right above ``start_row``, top to bottom."""
    block = []
    row = start_row - 1
    while row in by_end:
        c = by_end[row][-1]
        block.append(c)
        row = c.start_point[0] - 1
    return list(reversed(block))


def _select_doc(block: list, lang: str, src: bytes) -> list:
    """The comments of ``block`` that document the function in ``lang``'s convention."""
    if not block:
        return []
    texts = [_text(src, c.start_byte, c.end_byte) for c in block]
    style = DOC_STYLE.get(lang, "comment_above")
    if style == "doc_block":
        return [block[-1]] if texts[-1].startswith("/**") and texts[-1] != "/**/" else []
    if style == "triple_slash":
        if texts[-1].startswith("/**") and lang == "rust":
            return [block[-1]]
        chosen = []
        for c, t in zip(reversed(block), reversed(texts)):
            if t.startswith("///") and not t.startswith("////"):
                chosen.append(c)
            else:
                break
        return list(reversed(chosen))
    if style == "comment_above" and texts[-1].startswith("/*"):
        chosen = [block[-1]]
    else:
        # line comments: the trailing run of the same marker
        chosen = []
        for c, t in zip(reversed(block), reversed(texts)):
            if t.startswith("/*"):
                break
            chosen.append(c)
        chosen.reverse()
    joined = "\n".join(_text(src, c.start_byte, c.end_byte) for c in chosen)
    if _LICENSE.search(joined) or re.search(r"frozen_string_literal|rubocop:|-\*-", joined):
        return []
    return chosen


def _with_attributes(anchor):
    """The first of the attribute items (Rust ``#[...]``) right above ``anchor``, or ``anchor``;
    they belong to the function as in the runtime's chunks."""
    first = anchor
    prev = anchor.prev_named_sibling
    while prev is not None and prev.type in ATTRIBUTE_TYPES and \
            _last_row(prev) >= first.start_point[0] - 1:
        first = prev
        prev = prev.prev_named_sibling
    return first


def _python_docstring_stmt(node):
    body = node.child_by_field_name("body")
    if body is None or body.named_child_count == 0:
        return None
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_child_count == 1 and \
            first.named_children[0].type in ("string", "concatenated_string"):
        return first
    return None


def extract_functions(text: str, lang: str) -> list[FunctionDoc]:
    """Every function of a file that carries documentation in ``lang``'s convention."""
    src = text.encode("utf-8")
    tree = get_parser(lang).parse(src)
    root = tree.root_node
    by_end = _comment_blocks(comment_nodes(lang, root), src) if lang != "python" else {}
    out: list[FunctionDoc] = []
    for unit in function_units(lang, root):
        full_name = _unit_name(unit, lang)
        name = _short(full_name or "")
        if not name:
            continue  # anonymous
        node = _function_node(unit)
        anchor = _anchor(unit, lang)
        doc_stmt = None
        if lang == "python":
            doc_stmt = _python_docstring_stmt(node)
            if doc_stmt is None:
                continue
            raw = _text(src, doc_stmt.start_byte, doc_stmt.end_byte)
            doc = python_docstring_text(raw)
            if doc is None:
                continue
            code = _remove_span(src, anchor.start_byte, anchor.end_byte,
                                doc_stmt.start_byte, doc_stmt.end_byte)
            with_doc = _dedent_from(src, anchor.start_byte, anchor.end_byte)
        else:
            first = _with_attributes(anchor)
            chosen = _select_doc(_doc_comments_above(first.start_point[0], by_end), lang, src)
            if not chosen:
                continue
            doc = strip_comment_markers("\n".join(
                _text(src, c.start_byte, c.end_byte) for c in chosen))
            code = _dedent_from(src, first.start_byte, anchor.end_byte)
            with_doc = _dedent_from(src, chosen[0].start_byte, anchor.end_byte)
        statements, trivial = _body_stats(node, lang, doc_stmt, src)
        decorators = _text(src, anchor.start_byte, node.start_byte)
        out.append(FunctionDoc(
            name=name,
            symbol=_qualify(unit, full_name, src),
            node_type=node.type,
            start_line=anchor.start_point[0] + 1,
            end_line=anchor.end_point[0] + 1,
            doc=doc,
            code=code,
            code_with_doc=with_doc,
            statements=statements,
            trivial_body=trivial,
            is_constructor=_is_constructor(node, lang, name, full_name, src),
            is_property="@property" in decorators or "@cached_property" in decorators,
            has_error=node.has_error,
        ))
    return out


def _remove_span(src: bytes, start: int, end: int, cut_a: int, cut_b: int) -> str:
    """Dedented ``src[start:end]`` without ``src[cut_a:cut_b]`` (whole lines when it has them)."""
    ls = _line_start(src, cut_a)
    if not src[ls:cut_a].strip():
        cut_a = ls
        nl = src.find(b"\n", cut_b)
        if nl != -1 and not src[cut_b:nl].strip():
            cut_b = nl + 1
    piece = src[:cut_a] + src[cut_b:]
    return _dedent_from(piece, start, end - (cut_b - cut_a))


def _is_constructor(node, lang: str, name: str, full_name: str, src: bytes) -> bool:
    if node.type == "constructor_declaration":
        return True
    if (lang, name) in {("javascript", "constructor"), ("typescript", "constructor"),
                        ("tsx", "constructor"), ("ruby", "initialize"), ("php", "__construct"),
                        ("php", "__destruct")}:
        return True
    if lang == "cpp":
        if name.startswith("~"):
            return True
        parts = re.split(r"::|\.", full_name)
        if len(parts) >= 2 and parts[-1] == parts[-2]:
            return True
        parent = node.parent
        while parent is not None and parent.type not in ("class_specifier", "struct_specifier"):
            parent = parent.parent
        if parent is not None:
            owner = parent.child_by_field_name("name")
            if owner is not None and _text(src, owner.start_byte, owner.end_byte) == name:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class SourceInfo:
    """Where pairs came from (recorded in every record)."""

    name: str
    version: str | None = None


@dataclass
class TextPair:
    query: str
    code: str
    lang: str
    repo: str
    path: str
    symbol: str
    variant: str  # docstring | short | with_docstring
    group: str  # shared by the variants of one function
    start_line: int
    end_line: int
    source: SourceInfo
    kind: str = "text"

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["source"] = asdict(self.source)
        return rec


@dataclass
class CodePair:
    """Cross-language code -> code pair (e.g. a function and its translation)."""

    query: str  # code in lang_query
    code: str  # code in lang
    lang_query: str
    lang: str
    repo: str
    path: str
    symbol: str
    group: str
    source: SourceInfo
    variant: str = "translation"
    kind: str = "code"
    #: What made ``code`` when it is synthetic, e.g. ``{"kind": "hf", "model": "..."}``.
    generator: dict[str, str] | None = None

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["source"] = asdict(self.source)
        return rec


VARIANTS = ("docstring", "short", "with_docstring")

_TEST_PATH = re.compile(
    r"(^|/)(tests?|__tests__|testing/_internal|test_?utils?|spec|specs|fixtures?)/"
    r"|(^|/)(test_[^/]*|[^/]*_tests?\.\w+|conftest\.py|[^/]*Tests?\.(java|cs|kt)|"
    r"[^/]*\.(test|spec)\.[cm]?[jt]sx?)$", re.IGNORECASE,
)
_TEST_NAME = re.compile(r"^(test($|_|[A-Z0-9])|Test[A-Z_0-9]|Benchmark[A-Z_]|Example[A-Z_]?)")
_ACCESSOR = re.compile(r"^(get|set|is|has)($|_|[A-Z])")


def is_test_path(path: str) -> bool:
    return bool(_TEST_PATH.search(path))


@dataclass(frozen=True)
class MiningConfig:
    """What the miner keeps. Defaults follow CodeSearchNet where it said (3+ word queries,
    3+ line functions, no tests, no constructors or standard dunder methods)."""

    #: Languages to mine (None: every language with a grammar).
    languages: frozenset[str] | None = None
    variants: tuple[str, ...] = VARIANTS
    min_query_words: int = 3
    min_code_lines: int = 3
    max_code_lines: int = 200
    max_code_chars: int = 12_000
    max_file_bytes: int = 1_048_576  # the chunker's default limit
    #: Longest short query (words).
    short_max_words: int = 10
    #: Share of short queries prefixed with the language name ("python read a csv file").
    lang_prefix_prob: float = 0.25
    drop_tests: bool = True
    drop_constructors: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        assert not unknown, f"unknown variants {sorted(unknown)}; known: {VARIANTS}"


LANG_DISPLAY = {"python": "python", "javascript": "javascript", "typescript": "typescript",
                "tsx": "typescript", "go": "go", "rust": "rust", "java": "java", "c": "c",
                "cpp": "c++", "csharp": "c#", "ruby": "ruby", "php": "php", "lua": "lua"}


def _stable_unit(key: str) -> float:
    """A deterministic number in [0, 1) from ``key``."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def group_id(repo: str, path: str, symbol: str, start_line: int) -> str:
    return hashlib.sha1(f"{repo}\0{path}\0{symbol}\0{start_line}".encode()).hexdigest()[:16]


def reject_reason(fn: FunctionDoc, lang: str, path: str, cfg: MiningConfig) -> str | None:
    """Why a documented function is not a useful pair, or None."""
    if fn.has_error:
        return "parse_error"
    if cfg.drop_tests and _TEST_NAME.match(fn.name):
        return "test"
    if lang == "python" and re.fullmatch(r"__\w+__", fn.name):
        return "dunder"
    if cfg.drop_constructors and fn.is_constructor:
        return "constructor"
    if fn.trivial_body:
        return "trivial_body"
    lines = [ln for ln in fn.code.splitlines() if ln.strip()]
    if len(lines) < cfg.min_code_lines:
        return "short"
    if len(lines) > cfg.max_code_lines or len(fn.code) > cfg.max_code_chars:
        return "long"
    if fn.statements <= 1 and (_ACCESSOR.match(fn.name) or fn.is_property):
        return "getter_setter"
    return None


def pairs_for_function(fn: FunctionDoc, lang: str, repo: str, path: str, source: SourceInfo,
                       cfg: MiningConfig) -> tuple[list[TextPair], str | None]:
    """The pairs of one documented function, or ``([], reason)``."""
    why = reject_reason(fn, lang, path, cfg)
    if why:
        return [], why
    query = clean_query(fn.doc, cfg.min_query_words)
    if query is None:
        return [], "query"
    group = group_id(repo, path, fn.symbol, fn.start_line)
    short = short_query(query, cfg.short_max_words, cfg.min_query_words, name=fn.name)
    if short is not None and _stable_unit("prefix:" + group) < cfg.lang_prefix_prob:
        short = f"{LANG_DISPLAY.get(lang, lang)} {short}"
    common: dict[str, Any] = {"lang": lang, "repo": repo, "path": path, "symbol": fn.symbol,
                              "group": group, "start_line": fn.start_line,
                              "end_line": fn.end_line, "source": source}
    out = []
    for variant in cfg.variants:
        if variant == "docstring":
            out.append(TextPair(query=query, code=fn.code, variant=variant, **common))
        elif variant == "short" and short is not None and short != query.lower():
            out.append(TextPair(query=short, code=fn.code, variant=variant, **common))
        elif variant == "with_docstring":
            out.append(TextPair(query=short or query, code=fn.code_with_doc, variant=variant,
                                **common))
    return out, None


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """A tree of source files to mine: a folder (walked like a workspace) or a file list."""

    name: str
    version: str | None
    root: Path
    repo: str | None = None  # the ``repo`` field; default: name
    files: tuple[str, ...] | None = None  # root-relative paths; None: walk the folder
    exclude: tuple[str, ...] = ()  # gitignore-style patterns (when walking)

    @property
    def info(self) -> SourceInfo:
        return SourceInfo(self.name, self.version)

    def iter_files(self) -> Iterator[str]:
        if self.files is not None:
            yield from self.files
            return
        from mose_lsp.config import Settings
        from mose_lsp.walker import iter_files

        for entry in iter_files(self.root, Settings(exclude=self.exclude)):
            yield entry.rel


STDLIB_EXCLUDE = (
    "test/", "tests/", "idlelib/", "turtledemo/", "lib2to3/", "pydoc_data/", "ensurepip/",
    "site-packages/", "dist-packages/", "config-*/", "__phello__/", "tkinter/test/",
    "unittest/test/", "ctypes/test/", "distutils/tests/", "sqlite3/test/", "*.pyi",
)


def folder_source(path: str | Path, name: str | None = None, version: str | None = None,
                  exclude: Iterable[str] = ()) -> Source:
    """A folder; its version is the checked-out git commit when it is a git work tree."""
    from .corpus import git_head

    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError(f"pair source {str(path)!r} is not a folder")
    return Source(name=name or root.name, version=version or git_head(root), root=root,
                  exclude=tuple(exclude))


def stdlib_source() -> Source:
    """This interpreter's standard library, without its tests, IDLE and demos."""
    return Source(name="cpython-stdlib", version=platform.python_version(),
                  root=Path(sysconfig.get_paths()["stdlib"]), exclude=STDLIB_EXCLUDE)


def code_files(paths: Iterable[str]) -> tuple[str, ...]:
    """The files of a distribution that mining reads: parsed languages, no tests, no stubs,
    nothing outside site-packages (the same choice for a wheel and an installed distribution)."""
    files = set()
    for rel in paths:
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyi"):
            continue
        if language_for_path(rel) not in parsed_languages() or is_test_path(rel):
            continue
        files.add(rel)
    return tuple(sorted(files))


def site_packages_sources(path: str | Path | None = None,
                          skip: Iterable[str] = ()) -> list[Source]:
    """One source per installed distribution in a site-packages folder (name and version from
    its metadata, files from its RECORD), tests excluded. Editable installs have no files."""
    from importlib.metadata import distributions

    sp = Path(path or sysconfig.get_paths()["purelib"]).resolve()
    skip_names = {s.lower() for s in skip}
    sources = []
    for dist in sorted(distributions(path=[str(sp)]), key=lambda d: d.metadata["Name"].lower()):
        name = dist.metadata["Name"]
        if name.lower() in skip_names or not dist.files:
            continue
        files = code_files(Path(f).as_posix() for f in dist.files)
        if files:
            sources.append(Source(name=name, version=dist.version, root=sp, repo=name,
                                  files=files))
    return sources


@dataclass
class MiningStats:
    files: int = 0
    files_skipped: Counter = field(default_factory=Counter)
    functions: Counter = field(default_factory=Counter)  # documented functions per language
    rejected: Counter = field(default_factory=Counter)
    pairs: Counter = field(default_factory=Counter)  # "lang/variant"
    sources: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "files_skipped": dict(self.files_skipped),
                "documented_functions": dict(self.functions), "rejected": dict(self.rejected),
                "pairs": dict(sorted(self.pairs.items())), "total_pairs": sum(self.pairs.values()),
                "sources": self.sources}


def mine_source(source: Source, cfg: MiningConfig = MiningConfig(),
                stats: MiningStats | None = None) -> Iterator[TextPair]:
    """Pairs from every file of ``source``."""
    stats = stats if stats is not None else MiningStats()
    before = sum(stats.pairs.values())
    parsed = parsed_languages()
    for rel in source.iter_files():
        lang = language_for_path(rel)
        if lang not in parsed or (cfg.languages is not None and lang not in cfg.languages):
            continue
        if cfg.drop_tests and is_test_path(rel):
            stats.files_skipped["test"] += 1
            continue
        text = read_text_file(source.root / rel, cfg.max_file_bytes)
        if text is None:
            stats.files_skipped["unreadable"] += 1
            continue
        if looks_generated(rel, text):
            stats.files_skipped["generated"] += 1
            continue
        lang = language_for_path(rel, text)  # .h may turn out to be C++
        if lang not in parsed or (cfg.languages is not None and lang not in cfg.languages):
            continue
        stats.files += 1
        yield from mine_text(text, lang, source.repo or source.name, rel, source.info, cfg, stats)
    stats.sources.append({"name": source.name, "version": source.version,
                          "pairs": sum(stats.pairs.values()) - before})


def mine_text(text: str, lang: str, repo: str, path: str, source: SourceInfo,
              cfg: MiningConfig = MiningConfig(),
              stats: MiningStats | None = None) -> Iterator[TextPair]:
    """Pairs from one file's text."""
    stats = stats if stats is not None else MiningStats()
    for fn in extract_functions(text, lang):
        stats.functions[lang] += 1
        pairs, why = pairs_for_function(fn, lang, repo, path, source, cfg)
        if why:
            stats.rejected[why] += 1
            continue
        for pair in pairs:
            stats.pairs[f"{lang}/{pair.variant}"] += 1
            yield pair


def write_jsonl(records: Iterable[Any], path: str | Path) -> int:
    """Write records (dicts or objects with ``to_record``) as JSONL; returns the count."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for rec in records:
            data = rec.to_record() if hasattr(rec, "to_record") else rec
            fh.write(json.dumps(data, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not JSON ({err.msg})") from err

"""Docstring -> function mining: extraction per language, query cleaning, filters, variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mose_training.data.pairs import (
    MiningConfig,
    MiningStats,
    SourceInfo,
    clean_markup,
    clean_query,
    extract_functions,
    first_paragraph,
    folder_source,
    is_test_path,
    mine_source,
    mine_text,
    pairs_for_function,
    parses_cleanly,
    reject_reason,
    short_query,
)

FIXTURES = Path(__file__).parent / "fixtures" / "repos"
SRC = SourceInfo("test", "0")
NO_PREFIX = MiningConfig(lang_prefix_prob=0.0)


def only(text: str, lang: str, symbol: str):
    found = [f for f in extract_functions(text, lang) if f.symbol == symbol]
    assert len(found) == 1, [f.symbol for f in extract_functions(text, lang)]
    return found[0]


def docstring_pair(text: str, lang: str, symbol: str):
    fn = only(text, lang, symbol)
    pairs, why = pairs_for_function(fn, lang, "repo", "file", SRC, NO_PREFIX)
    assert why is None, why
    return {p.variant: p for p in pairs}


# ---------------------------------------------------------------------------------------------
# Extraction per language (real-style snippets written for these tests)

PYTHON = '''
import os


class ConfigLoader:
    """Loads settings files."""

    def __init__(self, root):
        """Create a loader for files under root."""
        self.root = root
        self.cache = {}

    def load(self, name, default=None):
        """Read a settings file and parse it as ``key = value`` lines.

        Blank lines and ``#`` comments are skipped.

        :param name: file name relative to the root
        :returns: a dict of settings
        """
        path = os.path.join(self.root, name)
        if not os.path.exists(path):
            return default
        with open(path) as fh:
            return dict(line.split("=", 1) for line in fh if "=" in line)

    @property
    def size(self):
        """Number of cached files."""
        return len(self.cache)

    def reset(self):
        """Forget every cached file (to be implemented)."""
        pass


def expand_user_paths(paths):
    """Expand a leading ``~`` in each path of a list.

    Args:
        paths: a list of strings.
    """
    out = []
    for p in paths:
        out.append(os.path.expanduser(p))
    return out


def test_expand_user_paths():
    """The home folder replaces the tilde in every path."""
    assert expand_user_paths(["~"])[0] != "~"
    assert expand_user_paths([])== []
    assert True
'''


def test_python_docstring_removed_and_cleaned():
    pairs = docstring_pair(PYTHON, "python", "ConfigLoader.load")
    doc = pairs["docstring"]
    assert doc.query == "Read a settings file and parse it as key = value lines."
    assert doc.code.startswith("def load(self, name, default=None):\n    path = ")
    assert '"""' not in doc.code and ":param" not in doc.code
    assert pairs["short"].query == "read a settings file"  # 11 words: cut before "and"
    with_doc = pairs["with_docstring"]
    assert '"""Read a settings file' in with_doc.code and with_doc.query == pairs["short"].query
    assert len({p.group for p in pairs.values()}) == 1


def test_python_filters_constructor_property_pass_and_tests():
    reasons = {fn.symbol: reject_reason(fn, "python", "mod.py", NO_PREFIX)
               for fn in extract_functions(PYTHON, "python")}
    assert reasons["ConfigLoader.__init__"] == "dunder"
    assert reasons["ConfigLoader.size"] in ("short", "getter_setter")
    assert reasons["ConfigLoader.reset"] == "trivial_body"
    assert reasons["test_expand_user_paths"] == "test"
    assert reasons["ConfigLoader.load"] is None
    assert reasons["expand_user_paths"] is None
    pair = docstring_pair(PYTHON, "python", "expand_user_paths")["docstring"]
    assert pair.query == "Expand a leading ~ in each path of a list."  # the Args: section is cut


JAVASCRIPT = '''
import { readFile } from "node:fs/promises";

// Not documentation: a plain line comment.
function helper(a) {
  const b = a * 2;
  return b + 1;
}

/**
 * Parses a semantic version string such as {@link Version 1.2.3} into its parts.
 *
 * @param {string} text the version
 * @returns {{major: number, minor: number, patch: number}}
 */
export function parseVersion(text) {
  const [major, minor, patch] = text.split(".").map(Number);
  if ([major, minor, patch].some(Number.isNaN)) throw new Error(`bad version ${text}`);
  return { major, minor, patch };
}

/** Reads a JSON file from disk and returns the parsed object. */
const readJson = async (path) => {
  const raw = await readFile(path, "utf8");
  return JSON.parse(raw);
};

class Cache {
  /**
   * Returns the cached value for key, computing and storing it when missing.
   */
  getOrCompute(key, compute) {
    if (!this.map.has(key)) {
      this.map.set(key, compute(key));
    }
    return this.map.get(key);
  }
}
'''


def test_javascript_jsdoc_functions_arrows_and_methods():
    symbols = {f.symbol for f in extract_functions(JAVASCRIPT, "javascript")}
    assert symbols == {"parseVersion", "readJson", "Cache.getOrCompute"}  # helper has no JSDoc
    doc = docstring_pair(JAVASCRIPT, "javascript", "parseVersion")["docstring"]
    assert doc.query == "Parses a semantic version string such as 1.2.3 into its parts."
    assert doc.code.startswith("export function parseVersion(text) {")
    assert "/**" not in doc.code
    arrow = docstring_pair(JAVASCRIPT, "javascript", "readJson")
    assert arrow["docstring"].code.startswith("const readJson = async (path) => {")
    assert arrow["with_docstring"].code.startswith("/** Reads a JSON file")
    method = docstring_pair(JAVASCRIPT, "javascript", "Cache.getOrCompute")["docstring"]
    assert method.code.startswith("getOrCompute(key, compute) {\n  if (")  # dedented


TYPESCRIPT = '''
/**
 * Groups the items of a list by the key that a function computes for each item.
 * @param items the list
 */
export function groupBy<T, K extends string>(items: T[], key: (item: T) => K): Record<K, T[]> {
  const out = {} as Record<K, T[]>;
  for (const item of items) {
    (out[key(item)] ??= []).push(item);
  }
  return out;
}
'''


def test_typescript_generic_function():
    doc = docstring_pair(TYPESCRIPT, "typescript", "groupBy")["docstring"]
    assert doc.query == ("Groups the items of a list by the key that a function computes "
                         "for each item.")
    assert doc.code.startswith("export function groupBy<T, K extends string>")


GO = '''package cache

import "sync"

// LRU is a fixed-size cache that evicts the least recently used entry.
type LRU struct {
	mu    sync.Mutex
	items map[string]*entry
}

// Get returns the value stored under key and marks it as recently used.
// The second result reports whether the key was present.
func (c *LRU) Get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[key]
	if !ok {
		return "", false
	}
	c.touch(e)
	return e.value, true
}

// This comment is separated from the function by a blank line.

func detached(a int) int {
	b := a + 1
	return b * 2
}
'''


def test_go_doc_comments_and_receivers():
    fns = {f.symbol: f for f in extract_functions(GO, "go")}
    assert set(fns) == {"LRU.Get"}  # the detached comment does not document detached()
    pairs = docstring_pair(GO, "go", "LRU.Get")
    assert pairs["docstring"].query == ("Get returns the value stored under key and marks it as "
                                        "recently used. The second result reports whether the "
                                        "key was present.")
    # Go's leading name is dropped; 11 words are cut before "and"
    assert pairs["short"].query == "returns the value stored under key"
    assert pairs["docstring"].code.startswith("func (c *LRU) Get(key string) (string, bool) {")


JAVA = '''package org.example.text;

public final class Strings {
    private final String sep;

    /** Creates the helper. */
    public Strings(String sep) {
        this.sep = sep;
        this.check();
        this.init();
    }

    /**
     * Joins the <em>non-empty</em> parts with the separator, like {@code String.join}.
     *
     * <p>Null parts are skipped.
     *
     * @param parts the parts to join
     * @return the joined string
     */
    @Override
    public String joinNonEmpty(List<String> parts) {
        StringBuilder sb = new StringBuilder();
        for (String p : parts) {
            if (p == null || p.isEmpty()) continue;
            if (sb.length() > 0) sb.append(sep);
            sb.append(p);
        }
        return sb.toString();
    }

    /**
     * Returns the separator.
     */
    public String getSep() {
        return sep;
    }
}
'''


def test_java_javadoc_and_filters():
    fns = {f.symbol: f for f in extract_functions(JAVA, "java")}
    assert reject_reason(fns["Strings.Strings"], "java", "Strings.java", NO_PREFIX) == \
        "constructor"
    assert reject_reason(fns["Strings.getSep"], "java", "Strings.java", NO_PREFIX) in (
        "short", "getter_setter")
    doc = docstring_pair(JAVA, "java", "Strings.joinNonEmpty")["docstring"]
    assert doc.query == "Joins the non-empty parts with the separator, like String.join."
    assert doc.code.startswith("@Override\npublic String joinNonEmpty(")


RUST = '''
use std::collections::HashMap;

/// Counts how many times each byte value occurs in a buffer.
///
/// # Examples
///
/// ```
/// let h = byte_histogram(b"aab");
/// ```
#[inline]
#[must_use]
pub fn byte_histogram(buf: &[u8]) -> [usize; 256] {
    let mut counts = [0usize; 256];
    for &b in buf {
        counts[b as usize] += 1;
    }
    counts
}

// A plain comment, not a doc comment.
fn plain(a: u32) -> u32 {
    let b = a + 1;
    b * 2
}

impl Index {
    /// Looks up the [`Entry`] for a word, returning `None` when it is unknown.
    pub fn lookup(&self, word: &str) -> Option<&Entry> {
        let key = word.to_lowercase();
        self.entries.get(&key)
    }
}
'''


def test_rust_doc_comments_attributes_and_impl():
    fns = {f.symbol for f in extract_functions(RUST, "rust")}
    assert fns == {"byte_histogram", "Index.lookup"}
    pairs = docstring_pair(RUST, "rust", "byte_histogram")
    assert pairs["docstring"].query == "Counts how many times each byte value occurs in a buffer."
    assert pairs["docstring"].code.startswith("#[inline]\n#[must_use]\npub fn byte_histogram")
    assert pairs["with_docstring"].code.startswith("/// Counts how many times")
    lookup = docstring_pair(RUST, "rust", "Index.lookup")["docstring"]
    assert lookup.query == "Looks up the Entry for a word, returning None when it is unknown."


RUBY = '''# frozen_string_literal: true

module Slug
  # Turns a title into a URL slug: lowercase words
  # joined by dashes.
  def self.slugify(title)
    words = title.downcase.scan(/[a-z0-9]+/)
    words.join("-")
  end

  class Registry
    # Registers a slug for the record and returns it, adding a counter on clashes.
    def register(record)
      base = Slug.slugify(record.title)
      slug = base
      n = 1
      slug = "#{base}-#{n += 1}" while @taken.include?(slug)
      @taken << slug
      slug
    end
  end
end
'''


def test_ruby_comments_for_methods_and_singleton_methods():
    fns = {f.symbol for f in extract_functions(RUBY, "ruby")}
    assert fns == {"Slug.slugify", "Slug.Registry.register"}
    doc = docstring_pair(RUBY, "ruby", "Slug.slugify")["docstring"]
    assert doc.query == "Turns a title into a URL slug: lowercase words joined by dashes."
    assert doc.code.startswith("def self.slugify(title)")


PHP = '''<?php
namespace App\\Util;

class Money
{
    /**
     * Formats an amount of cents as a decimal string with two digits.
     *
     * @param int $cents
     * @return string
     */
    public static function format(int $cents): string
    {
        $sign = $cents < 0 ? '-' : '';
        $cents = abs($cents);
        return $sign . intdiv($cents, 100) . '.' . str_pad((string) ($cents % 100), 2, '0', STR_PAD_LEFT);
    }
}
'''


def test_php_docblock_method():
    doc = docstring_pair(PHP, "php", "Money.format")["docstring"]
    assert doc.query == "Formats an amount of cents as a decimal string with two digits."
    assert doc.code.startswith("public static function format(int $cents): string")


C = '''/*
 * Copyright (c) 2021 Example Authors. Licensed under the MIT license.
 */
#include <stddef.h>

/* Returns the index of the first occurrence of c in buf, or -1 when absent. */
long find_byte(const unsigned char *buf, size_t len, unsigned char c)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == c)
            return (long)i;
    }
    return -1;
}
'''


def test_c_comment_above_not_license():
    fns = extract_functions(C, "c")
    assert [f.symbol for f in fns] == ["find_byte"]
    doc = docstring_pair(C, "c", "find_byte")["docstring"]
    assert doc.query == "Returns the index of the first occurrence of c in buf, or -1 when absent."
    assert "Copyright" not in doc.code and "Copyright" not in \
        docstring_pair(C, "c", "find_byte")["with_docstring"].code


CPP = '''#include <vector>

namespace geo {

// Computes the squared Euclidean distance between two points
// of the same dimension.
template <typename T>
T squared_distance(const std::vector<T>& a, const std::vector<T>& b) {
    T acc = T();
    for (size_t i = 0; i < a.size(); ++i) {
        acc += (a[i] - b[i]) * (a[i] - b[i]);
    }
    return acc;
}

class Polygon {
 public:
  // Builds an empty polygon.
  Polygon() : points_() {
    reserve();
    reset();
  }
};

// Returns the signed area of the polygon with the shoelace formula.
double Polygon::area() const {
    double s = 0;
    for (size_t i = 0; i < points_.size(); ++i) {
        const auto& p = points_[i];
        const auto& q = points_[(i + 1) % points_.size()];
        s += p.x * q.y - q.x * p.y;
    }
    return s / 2;
}

}  // namespace geo
'''


def test_cpp_templates_out_of_class_methods_and_constructors():
    fns = {f.symbol: f for f in extract_functions(CPP, "cpp")}
    assert "geo.squared_distance" in fns
    pairs = docstring_pair(CPP, "cpp", "geo.squared_distance")
    assert pairs["docstring"].query == ("Computes the squared Euclidean distance between two "
                                        "points of the same dimension.")
    assert pairs["docstring"].code.startswith("template <typename T>\nT squared_distance(")
    ctor = [f for f in fns.values() if f.name == "Polygon"]
    assert ctor and reject_reason(ctor[0], "cpp", "poly.cc", NO_PREFIX) == "constructor"
    area = [f for f in fns.values() if f.name == "area"]
    assert area and reject_reason(area[0], "cpp", "poly.cc", NO_PREFIX) is None


CSHARP = '''namespace Shop;

public class Cart
{
    /// <summary>
    /// Adds the <paramref name="quantity"/> of a product to the cart, merging lines of the
    /// same <see cref="Product"/>.
    /// </summary>
    /// <param name="product">The product.</param>
    [Obsolete("use AddLine")]
    public void Add(Product product, int quantity)
    {
        var line = lines.Find(l => l.Product == product);
        if (line is null) lines.Add(new Line(product, quantity));
        else line.Quantity += quantity;
    }
}
'''


def test_csharp_xml_summary():
    doc = docstring_pair(CSHARP, "csharp", "Cart.Add")["docstring"]
    assert doc.query == ("Adds the quantity of a product to the cart, merging lines of the same "
                         "Product.")
    assert doc.code.startswith('[Obsolete("use AddLine")]\npublic void Add(')


LUA = '''local M = {}

--- Splits a string on a separator and returns the parts as a table.
-- @param s the string
function M.split(s, sep)
  local out = {}
  for part in string.gmatch(s, "([^" .. sep .. "]+)") do
    table.insert(out, part)
  end
  return out
end

return M
'''


def test_lua_comments():
    doc = docstring_pair(LUA, "lua", "M.split")["docstring"]
    assert doc.query == "Splits a string on a separator and returns the parts as a table."


# ---------------------------------------------------------------------------------------------
# Query cleaning and shaping


def test_clean_markup_variants():
    assert clean_markup("Use {@link java.util.List#add(Object) add} and {@code x < y}.") == \
        "Use add and x < y."
    assert clean_markup("See :func:`~os.path.join` and ``sep``.") == "See join and sep."
    assert clean_markup("Wraps [`Vec`] like [std](https://doc.rust-lang.org) **does**") == \
        "Wraps Vec like std does"
    assert clean_markup("A <b>bold</b> &amp; <i>italic</i> claim") == "A bold & italic claim"


def test_first_paragraph_stops_at_tags_and_sections():
    assert first_paragraph("Do it.\n@param x the x") == "Do it."
    assert first_paragraph("Do it\nnow.\n\nMore text.") == "Do it now."
    assert first_paragraph("Compute.\nArgs:\n  x: y") == "Compute."
    assert first_paragraph("Compute things.\n>>> f(1)\n2") == "Compute things."
    assert first_paragraph("Fast path.\n# Examples\n```\nx\n```") == "Fast path."
    assert first_paragraph("\\brief Sum of a vector.\n\\param v the vector") == "Sum of a vector."
    assert first_paragraph("@brief Sum of a vector.\n@param v the vector") == "Sum of a vector."


def test_clean_query_rejects_short_and_noise():
    assert clean_query("Getter.") is None
    assert clean_query("TODO: make this faster later on") is None
    assert clean_query("{@inheritDoc}") is None
    assert clean_query("Deprecated: use parse_all instead of this") is None
    assert clean_query("See the documentation of Foo for the details.") is None
    assert clean_query("Implementation copied from the reference library.") is None
    assert clean_query("Seek to the given offset in the file.") is not None
    assert clean_query("Return the sum of the values.") == "Return the sum of the values."


def test_short_query_cuts_at_clause_and_lowercases():
    q = short_query("Return the index of the first item that matches the predicate, or -1 when "
                    "no item matches.")
    assert q == "return the index of the first item"  # cut before "that"
    assert short_query("Returns x.") is None  # under three words
    assert short_query("This function computes the mean of a sample.") == \
        "computes the mean of a sample"
    long = short_query("Write the rows of a table to a CSV file with a header line and quoting "
                       "rules")
    assert long is not None and len(long.split()) <= 10
    assert long.split()[-1] not in {"a", "the", "of", "with", "and", "to"}


def test_language_prefix_is_deterministic_and_partial():
    cfg = MiningConfig(lang_prefix_prob=0.5)
    text = "\n".join(
        f'def f{i}(x):\n    """Compute the value number {i} from x."""\n    y = x + {i}\n'
        f'    z = y * 2\n    return z\n' for i in range(60))
    shorts = [p.query for p in mine_text(text, "python", "r", "m.py", SRC, cfg)
              if p.variant == "short"]
    again = [p.query for p in mine_text(text, "python", "r", "m.py", SRC, cfg)
             if p.variant == "short"]
    assert shorts == again
    prefixed = sum(q.startswith("python ") for q in shorts)
    assert 10 < prefixed < 50, prefixed


def test_test_paths():
    for path in ("tests/test_x.py", "pkg/tests/util.py", "x_test.go", "src/FooTest.java",
                 "web/button.spec.ts", "conftest.py"):
        assert is_test_path(path), path
    for path in ("pkg/testing_utils_doc.py", "src/contest.py", "attest/main.py"):
        assert not is_test_path(path), path


def test_parses_cleanly():
    assert parses_cleanly("def f(x):\n    return x\n", "python")
    assert not parses_cleanly("def f(x:\n    return x\n", "python")
    assert not parses_cleanly("x = 1\n", "python")  # no function
    assert parses_cleanly("function f($x) { return $x; }", "php")  # no <?php tag needed
    assert not parses_cleanly("int f(int x) { return x + ; }", "c")


# ---------------------------------------------------------------------------------------------
# Mining source trees


def test_mine_fixture_repositories():
    stats = MiningStats()
    records = [p.to_record() for name in ("textkit", "gostats")
               for p in mine_source(folder_source(FIXTURES / name), NO_PREFIX, stats)]
    by = {(r["lang"], r["symbol"], r["variant"]) for r in records}
    assert ("python", "collapse_whitespace", "docstring") in by
    assert ("python", "word_frequencies", "short") in by
    assert ("python", "Summary.lexical_density", "with_docstring") in by
    assert ("go", "Median", "docstring") in by
    assert ("go", "Histogram.Add", "docstring") in by
    symbols = {r["symbol"] for r in records}
    assert "Summary.get_text" not in symbols  # getter
    assert "Summary.__init__" not in symbols  # dunder
    assert "TestMean" not in symbols  # test file skipped
    assert stats.files_skipped["test"] == 1
    for r in records:
        assert set(r) >= {"query", "code", "kind", "lang", "repo", "path", "symbol", "variant",
                          "source"}
        assert r["kind"] == "text" and r["source"]["name"] in ("textkit", "gostats")
        json.dumps(r)
    wf = [r for r in records if r["symbol"] == "word_frequencies" and r["variant"] == "docstring"]
    assert wf[0]["query"] == "Count how often each word occurs in the text."
    assert wf[0]["path"] == "textkit/stats.py"


@pytest.mark.parametrize("lang", ["python", "go"])
def test_language_selection(lang):
    cfg = MiningConfig(languages=frozenset({lang}), lang_prefix_prob=0.0)
    records = [p for name in ("textkit", "gostats")
               for p in mine_source(folder_source(FIXTURES / name), cfg)]
    assert records and {p.lang for p in records} == {lang}

"""MinHash-LSH near-dedup and decontamination against evaluation suites."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from mose_training.data import DataError
from mose_training.data.dedup import (
    Decontaminator,
    DedupReport,
    MinHasher,
    dedup_records,
    deduplicate,
    exact_jaccard,
    near_duplicate_flags,
    normalize,
    optimal_bands,
)

PARSE_ROW = '''def parse_row(line, delimiter=",", quote='"'):
    fields = []
    current = []
    in_quotes = False
    for ch in line.rstrip("\\n"):
        if ch == quote:
            in_quotes = not in_quotes
        elif ch == delimiter and not in_quotes:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields
'''

MERGE = '''def merge_sorted(left, right):
    out = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out
'''

RENAMED = PARSE_ROW.replace("delimiter", "sep")  # one variable renamed


def test_renamed_variable_is_a_near_duplicate_and_distinct_code_is_not():
    assert exact_jaccard(PARSE_ROW, RENAMED) >= 0.8
    assert exact_jaccard(PARSE_ROW, MERGE) < 0.2
    flags = near_duplicate_flags([PARSE_ROW, MERGE, RENAMED, "  " + MERGE.replace("\n", "\n  ")])
    assert flags == [None, None, 0, 1]  # keep-first; indentation does not hide a copy


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    hasher = MinHasher()
    errors = []
    for _ in range(40):
        a = rng.sample(words, 60)
        b = a[: rng.randint(10, 60)] + rng.sample(words, rng.randint(0, 40))
        ta, tb = " ".join(a), " ".join(b)
        sig = hasher.signatures([ta, tb])
        errors.append(abs(float(np.mean(sig[0] == sig[1])) - exact_jaccard(ta, tb)))
    assert np.mean(errors) < 0.03 and max(errors) < 0.12


def test_signatures_are_deterministic_and_empty_text_is_safe():
    a = MinHasher().signatures(["hello world", ""])
    b = MinHasher().signatures(["hello world", ""])
    assert (a == b).all() and a.dtype == np.uint32 and a.shape == (2, 256)
    assert (a[1] == 0xFFFFFFFF).all()


def test_banding_matches_the_paper_setting():
    assert optimal_bands(0.7, 256) == (25, 10)


def test_groups_are_decided_together():
    records = [
        {"group": "g1", "variant": "docstring", "code": PARSE_ROW, "query": "Parse a CSV row."},
        {"group": "g1", "variant": "short", "code": PARSE_ROW, "query": "parse a csv row"},
        {"group": "g2", "variant": "docstring", "code": RENAMED, "query": "Split a row."},
        {"group": "g2", "variant": "short", "code": RENAMED, "query": "split a row"},
        {"group": "g3", "variant": "docstring", "code": MERGE, "query": "Merge two lists."},
    ]
    report = DedupReport()
    kept = deduplicate(records, report=report)
    assert [(r["group"], r["variant"]) for r in kept] == [
        ("g1", "docstring"), ("g1", "short"), ("g3", "docstring")]
    assert report.groups == 3 and report.near_duplicates == 1


MERGE_JAVA = """static List<Integer> mergeSorted(List<Integer> left, List<Integer> right) {
    List<Integer> out = new ArrayList<>();
    int i = 0, j = 0;
    while (i < left.size() && j < right.size()) {
        if (left.get(i) <= right.get(j)) out.add(left.get(i++));
        else out.add(right.get(j++));
    }
    out.addAll(left.subList(i, left.size()));
    out.addAll(right.subList(j, right.size()));
    return out;
}"""

MERGE_GO = """func MergeSorted(left, right []int) []int {
	out := make([]int, 0, len(left)+len(right))
	i, j := 0, 0
	for i < len(left) && j < len(right) {
		if left[i] <= right[j] {
			out = append(out, left[i]); i++
		} else {
			out = append(out, right[j]); j++
		}
	}
	return append(append(out, left[i:]...), right[j:]...)
}"""


def test_code_pairs_are_keyed_on_both_sides():
    records = [
        {"kind": "code", "query": MERGE, "code": MERGE_JAVA},
        {"kind": "code", "query": MERGE, "code": MERGE_GO},  # same source, other translation
        {"kind": "code", "query": MERGE, "code": MERGE_JAVA + "\n"},
    ]
    assert deduplicate(records, group_field=None) == records[:2]


@pytest.fixture()
def eval_dir(tmp_path: Path) -> Path:
    """Two suites in the shared format, with a known function and a known query."""
    def write(folder: Path, corpus: list[dict], queries: list[dict]) -> None:
        folder.mkdir(parents=True)
        (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
        (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))

    write(tmp_path / "nl-dev", [{"id": "c1", "text": PARSE_ROW, "lang": "python"}],
          [{"id": "q1", "text": "python parse a quoted csv line into fields", "kind": "text",
            "lang": "python", "relevant": ["c1"]}])
    write(tmp_path / "x-dev" / "python-java",
          [{"id": "j1", "text": "int f_gold ( int a [ ] , int n ) { int s = 0 ; for ( int i = 0 "
                               "; i < n ; i ++ ) s += a [ i ] ; return s ; }", "lang": "java"}],
          [{"id": "p1", "text": "def f_gold ( a , n ) :\n    return sum ( a [ : n ] )",
            "kind": "code", "lang": "python", "relevant": ["j1"]}])
    return tmp_path


def test_decontamination_drops_planted_items_and_counts_per_suite(eval_dir):
    java_copy = ("int f_gold(int a[], int n) {\n    int s = 0;\n    for (int i = 0; i < n; i++)"
                 " s += a[i];\n    return s;\n}")
    records = [
        {"group": "a", "variant": "docstring", "query": "Parse a CSV line.", "code": RENAMED},
        {"group": "a", "variant": "short", "query": "parse a csv line", "code": RENAMED},
        {"group": "b", "variant": "short", "query": "Python parse a quoted CSV line into fields",
         "code": MERGE},
        {"group": "c", "variant": "docstring", "query": "Sum an array.", "code": java_copy},
        {"group": "d", "variant": "docstring", "query": "Merge two sorted lists into one.",
         "code": "def merge(a, b):\n    return sorted(a + b)\n"},
    ]
    kept, report = dedup_records(records, eval_dir=eval_dir)
    assert [r["group"] for r in kept] == ["d"]
    assert report.decontaminated == 4 and report.decontaminated_groups == 3
    assert report.decontaminated_by_suite == {"nl-dev": 3, "x-dev/python-java": 1}
    assert report.eval_texts == 4
    assert report.to_dict()["kept_by"] == {"?/docstring": 1}


def test_decontaminator_leaves_unrelated_text(eval_dir):
    deco = Decontaminator.from_eval_dir(eval_dir)
    hits = deco.matches([MERGE, "parse a csv", PARSE_ROW])
    assert hits[0] == [] and hits[1] == [] and len(hits[2]) == 1


def test_missing_eval_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Decontaminator.from_eval_dir(tmp_path / "nope")
    with pytest.raises(DataError, match="no evaluation suite"):
        Decontaminator.from_eval_dir(tmp_path)


def test_normalize():
    assert normalize("Arr [ Mid ]\n\tX") == "arr[mid]x"

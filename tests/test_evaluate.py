"""Metrics, suite loading, BM25, the evaluation loop and ``mose eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from helpers_onnx import build_model_dir
from typer.testing import CliRunner

from mose_lsp.encoder import ModelEncoder
from mose_lsp.errors import MoseError
from mose_lsp.eval_cli import register, resolve_encoder
from mose_lsp.evaluate import (
    Encoder,
    Metrics,
    PipelineSpec,
    SuiteError,
    bm25_rankings,
    dense_ranks,
    evaluate,
    evaluate_bm25,
    format_table,
    load_suite,
    load_suites,
    mrr,
    ndcg_at,
    pipeline_order,
    ranks_from_lists,
    ranks_from_order,
    recall_at,
    relevant_ranks,
    results_to_json,
)
from mose_lsp.lexical import identifier_tokens, lexical_signal

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum cache of model directories goes to a temporary folder, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

# -- metrics on hand-computed examples ---------------------------------------------------------


def test_rank_three_gives_reciprocal_rank_one_third() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    ranks = relevant_ranks(scores, [np.array([2])])
    assert ranks[0].tolist() == [3]
    assert mrr(ranks) == pytest.approx(1 / 3)
    assert recall_at(ranks, 1) == 0.0 and recall_at(ranks, 3) == 1.0
    assert ndcg_at(ranks, 10) == pytest.approx(1 / math.log2(4))


def test_mrr_averages_over_queries() -> None:
    scores = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    ranks = relevant_ranks(scores, [np.array([1]), np.array([0])])
    assert [r.tolist() for r in ranks] == [[2], [1]]
    assert mrr(ranks) == pytest.approx((1 / 2 + 1) / 2)


def test_ties_go_to_the_lower_corpus_index() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.9]])
    ranks = relevant_ranks(scores, [np.array([0, 2])])
    assert ranks[0].tolist() == [2, 4]


def test_several_relevant_documents() -> None:
    # Relevant documents at ranks 1 and 4 of 6.
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.6, 0.2]])
    ranks = relevant_ranks(scores, [np.array([0, 4])])
    assert ranks[0].tolist() == [1, 4]
    assert mrr(ranks) == 1.0
    assert recall_at(ranks, 1) == 0.5 and recall_at(ranks, 5) == 1.0
    expected = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at(ranks, 10) == pytest.approx(expected)
    assert ndcg_at(ranks, 3) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ranked_lists_and_orders_agree_with_score_ranks() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 20))
    relevant = [np.array([i, (i * 7) % 20]) for i in range(5)]
    order = np.argsort(-scores, axis=1, kind="stable")
    from_scores = relevant_ranks(scores, relevant)
    from_order = ranks_from_order(order, relevant)
    ids = [[f"d{j}" for j in row] for row in order]
    from_lists = ranks_from_lists(ids, [[f"d{j}" for j in rel] for rel in relevant])
    for a, b, c in zip(from_scores, from_order, from_lists):
        assert a.tolist() == b.tolist() == c.tolist()


def test_missing_from_a_ranked_list_counts_as_not_found() -> None:
    ranks = ranks_from_lists([["a", "b", "c"]], [["c", "z"]])
    assert ranks[0][0] == 3 and math.isinf(ranks[0][1])
    assert recall_at(ranks, 10) == 0.5
    assert mrr(ranks) == pytest.approx(1 / 3)


def test_metrics_record() -> None:
    m = Metrics.from_ranks([np.array([3]), np.array([1])], recall_ks=(1, 5, 100))
    assert m.mrr == pytest.approx(2 / 3)
    assert m.recall == {1: 0.5, 5: 1.0, 100: 1.0}
    assert m.to_json()["recall"] == {"1": 0.5, "5": 1.0, "100": 1.0}
    assert m.n_queries == 2


def test_pipeline_order_by_hand() -> None:
    shallow = np.array([[0.9, 0.8, 0.1, 0.5]])
    deep = np.array([[0.1, 0.2, 0.9, 0.3]])
    # Shallow top-2 = [0, 1], re-ranked by deep -> [1, 0], then the rest in shallow order.
    assert pipeline_order(shallow, deep, 2).tolist() == [[1, 0, 3, 2]]
    # K >= N: the deep ranking; K = 1: the shallow ranking.
    assert pipeline_order(shallow, deep, 4).tolist() == [[2, 3, 1, 0]]
    assert pipeline_order(shallow, deep, 1).tolist() == [[0, 1, 3, 2]]


# -- suites ------------------------------------------------------------------------------------


def write_suite(root: Path, docs: list[dict], queries: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


DOCS = [
    {"id": "add", "text": "def add(a, b):\n    return a + b", "lang": "python"},
    {"id": "read", "text": "def read_file(path):\n    return open(path).read()", "lang": "python"},
    {"id": "sum", "text": "int sum(int *arr, int n) { int s = 0; for (int i = 0; i < n; i++) "
                          "s += arr[i]; return s; }", "lang": "c"},
    {"id": "fetch", "text": "function fetchUser(id) { return http.get('/users/' + id); }",
     "lang": "javascript"},
    {"id": "parse", "text": "fn parse_config(text: &str) -> Result<Config, Error> { "
                            "toml::from_str(text) }", "lang": "rust"},
    {"id": "reader", "text": "func ReadAll(r io.Reader) ([]byte, error) { return io.ReadAll(r) }",
     "lang": "go"},
    {"id": "max", "text": "def largest(values):\n    return sorted(values)[-1]", "lang": "python"},
    {"id": "rev", "text": "def reverse(s):\n    return s[::-1]", "lang": "python"},
]
QUERIES = [
    {"id": "q1", "text": "read a file", "kind": "text", "lang": "en", "relevant": ["read"]},
    {"id": "q2", "text": "add two numbers", "kind": "text", "lang": "en", "relevant": ["add"]},
    {"id": "q3", "text": "public int add(int a, int b) { return a + b; }", "kind": "code",
     "lang": "java", "relevant": ["add", "sum"]},
    {"id": "q4", "text": "largest value in a list", "kind": "text", "lang": "en",
     "relevant": ["max"]},
    {"id": "q5", "text": "reverse a string", "kind": "text", "lang": "en", "relevant": ["rev"]},
]


def test_load_suite(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path / "mini", DOCS, QUERIES))
    assert suite.name == "mini"
    assert [d.id for d in suite.documents] == [d["id"] for d in DOCS]
    assert suite.queries[2].relevant == ("add", "sum") and suite.queries[2].kind == "code"
    assert [r.tolist() for r in suite.relevant_indices()][2] == [0, 2]
    assert len(suite.limit(2).queries) == 2 and len(suite.limit(2).documents) == len(DOCS)


def test_folder_of_suites(tmp_path: Path) -> None:
    root = tmp_path / "transcoder"
    write_suite(root / "python-java", DOCS, QUERIES)
    write_suite(root / "java-cpp", DOCS, QUERIES[:2])
    suites = load_suites(root)
    assert [s.name for s in suites] == ["transcoder/java-cpp", "transcoder/python-java"]
    assert [len(s.queries) for s in suites] == [2, 5]
    with pytest.raises(SuiteError, match="several suites"):
        load_suite(root)


@pytest.mark.parametrize("line, message", [
    ('{"id": "q", "text": "t", "kind": "text", "lang": "en", "relevant": ["add"]', "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"id": "q", "kind": "text", "lang": "en", "relevant": ["add"]}', "'text' is missing"),
    ('{"id": "q", "text": "t", "kind": "prose", "lang": "en", "relevant": ["add"]}', "kind must"),
    ('{"id": "q", "text": "t", "kind": "text", "lang": "en", "relevant": []}', "non-empty"),
    ('{"id": "q", "text": "t", "kind": "text", "lang": "en", "relevant": ["nope"]}',
     "not in corpus.jsonl"),
    ('{"id": "q1", "text": "t", "kind": "text", "lang": "en", "relevant": ["add"]}',
     "appears twice"),
])
def test_malformed_query_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    root = write_suite(tmp_path / "bad", DOCS, QUERIES[:1])
    with open(root / "queries.jsonl", "a") as fh:
        fh.write("\n" + line + "\n")  # line 2 is blank, the bad line is line 3
    with pytest.raises(SuiteError, match=f"line 3: .*{message}"):
        load_suite(root)


def test_malformed_corpus_lines(tmp_path: Path) -> None:
    root = write_suite(tmp_path / "bad", DOCS + [{"id": "add", "text": "x", "lang": "c"}], QUERIES)
    with pytest.raises(SuiteError, match=f"corpus.jsonl, line {len(DOCS) + 1}: .*twice"):
        load_suite(root)
    write_suite(root, DOCS[:1] + [{"id": 7, "text": "x", "lang": "c"}], QUERIES[:1])
    with pytest.raises(SuiteError, match="line 2: field 'id' is a int"):
        load_suite(root)
    with pytest.raises(SuiteError, match="does not exist"):
        load_suites(tmp_path / "absent")


# -- BM25 --------------------------------------------------------------------------------------


def test_identifier_tokens() -> None:
    assert identifier_tokens("def parseHTTPResponse2(self, x_val):") == [
        "def", "parse", "http", "response", "2", "self", "x", "val"]
    assert identifier_tokens("readFile read_file READ_FILE") == ["read", "file"] * 3
    assert identifier_tokens("getÉtéValue") == ["get", "été", "value"]


def test_bm25_baseline_ranks_with_the_store_full_text_index(tmp_path: Path) -> None:
    """The baseline is FTS5's BM25 as the store ranks chunks: the exact match first, and a
    document sharing no token with the query is not ranked at all."""
    write_suite(tmp_path, DOCS, [
        {"id": "q1", "text": "readFile(path)", "kind": "code", "lang": "python",
         "relevant": ["read"]},
        {"id": "q2", "text": "parse_config toml", "kind": "text", "lang": "",
         "relevant": ["parse"]},
        {"id": "q3", "text": "zzz unknown", "kind": "text", "lang": "", "relevant": ["read"]},
    ])
    suite = load_suite(tmp_path)
    ids = [d.id for d in suite.documents]
    rankings = bm25_rankings(suite)
    assert ids[rankings[0][0]] == "read" and ids[rankings[1][0]] == "parse"
    assert rankings[2] == []
    metrics = evaluate_bm25(suite).metrics
    assert metrics.mrr == pytest.approx(2 / 3) and metrics.recall[1] == pytest.approx(2 / 3)


def test_lexical_signal_normalises_one_ranking_and_picks_kept_candidates() -> None:
    ids, scores = [7, 3, 9, 1], [4.0, 2.0, 1.0, 0.5]
    signal, top = lexical_signal(ids, scores, 2)
    assert signal == {7: 1.0, 3: 0.5, 9: 0.25, 1: 0.125} and top == [7, 3]
    signal, top = lexical_signal(ids, scores, 2, keep=lambda i: i in {9, 1})
    assert signal[7] == 1.0 and top == [9, 1]  # the best of the whole ranking still divides
    assert lexical_signal(ids, scores, 0)[1] == []
    assert lexical_signal([], [], 5) == ({}, [])


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="shared/eval suites not present")
def test_bm25_baseline_numbers_on_the_dev_suites() -> None:
    """FTS5's BM25 (what the store ships) on the dev suites. It is below shared/eval's
    reference BM25 (33.3, 86.2, 90.6, 83.7) mostly because FTS5 floors the idf of a token in
    more than half the documents at zero, and code suites are full of such tokens."""
    measured = {"eval/cosqa-dev": 32.4, "eval/transcoder-dev/python-java": 84.5,
                "eval/transcoder-dev/java-cpp": 87.7, "eval/transcoder-dev/cpp-python": 79.9}
    got = {s.name: 100 * evaluate_bm25(s).metrics.mrr for s in load_suites(SHARED_EVAL)}
    for name, want in measured.items():
        assert abs(got[name] - want) < 0.1, f"{name}: BM25 MRR {got[name]:.2f}, was {want}"


# -- evaluation with the ONNX fixture ----------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def encoder(model_path: Path) -> ModelEncoder:
    return ModelEncoder.open(model_path, threads=1, use_cache=False)


@pytest.fixture()
def suite_path(tmp_path: Path) -> Path:
    return write_suite(tmp_path / "mini", DOCS, QUERIES)


def test_model_encoder_is_an_evaluation_encoder(encoder: ModelEncoder) -> None:
    assert isinstance(encoder, Encoder)


def test_pipeline_with_k_equal_to_the_corpus_is_the_deep_exit(encoder: ModelEncoder,
                                                             suite_path: Path) -> None:
    suite = load_suite(suite_path)
    n = len(suite.documents)
    result = evaluate(encoder, suite, pipeline=PipelineSpec(1, 3, k=n), recall_ks=(1, 5, 10),
                      lexical_weight=0)
    deep = next(e for e in result.exits if e.exit == 3)
    assert result.pipeline is not None
    assert result.pipeline.metrics == deep.metrics
    # And the orders themselves are the deep exit's stable ranking.
    q3 = encoder.encode([q.text for q in suite.queries], "text", 3)
    d3 = encoder.encode([d.text for d in suite.documents], "code", 3)
    q1 = encoder.encode([q.text for q in suite.queries], "text", 1)
    d1 = encoder.encode([d.text for d in suite.documents], "code", 1)
    order = pipeline_order(q1 @ d1.T, q3 @ d3.T, n)
    np.testing.assert_array_equal(order, np.argsort(-(q3 @ d3.T), axis=1, kind="stable"))
    # The shipped search (HNSW over deep vectors) ranks like the deep exit on a small corpus.
    assert result.product is not None and result.product.deep == 3
    assert result.product.metrics.mrr == pytest.approx(deep.metrics.mrr, abs=1e-9)
    # K = 1 keeps the shallow exit's ranking.
    one = evaluate(encoder, suite, exits=[1], pipeline=PipelineSpec(1, 3, k=1))
    assert one.pipeline is not None and one.pipeline.metrics.mrr == one.exits[0].metrics.mrr


def test_evaluate_reports_every_exit_with_costs(encoder: ModelEncoder, suite_path: Path) -> None:
    suite = load_suite(suite_path)
    result = evaluate(encoder, suite, pipeline=PipelineSpec(1, 3, k=3, candidate_ks=(2, 4)),
                      bm25=True, recall_ks=(1, 5, 10, 100))
    assert [e.exit for e in result.exits] == [1, 3]
    assert result.exits[1].relative_cost == pytest.approx(1.0)
    assert all(e.cost.items == len(DOCS) and e.cost.seconds > 0 for e in result.exits)
    assert result.pipeline is not None and set(result.pipeline.shallow_recall) == {2, 3, 4}
    assert result.bm25 is not None and result.bm25.metrics.n_queries == len(QUERIES)
    # The scores are the exact brute-force ranks.
    q = np.zeros((len(QUERIES), 16), dtype=np.float32)
    text = [i for i, x in enumerate(suite.queries) if x.kind == "text"]
    q[text] = encoder.encode([suite.queries[i].text for i in text], "text", 1,
                             [suite.queries[i].lang for i in text])
    q[2] = encoder.encode([suite.queries[2].text], "code", 1, ["java"])[0]
    d = encoder.encode([x.text for x in suite.documents], "code", 1,
                       [x.lang for x in suite.documents])
    assert result.exits[0].metrics == Metrics.from_ranks(
        dense_ranks(q, d, suite.relevant_indices()), (1, 5, 10, 100))
    table = format_table([result])
    assert "| exit 1 |" in table and "pipeline 1->3, K=3" in table and "| BM25 |" in table
    assert results_to_json([result])["suites"][0]["exits"][0]["recall"].keys() == {
        "1", "5", "10", "100"}
    with pytest.raises(MoseError, match="no exit"):
        evaluate(encoder, suite, exits=[2])


def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def test_eval_cli_json_output(model_path: Path, suite_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = CliRunner().invoke(cli_app(), [
        "eval", str(suite_path), "--model", str(model_path), "--k", "4", "--bm25",
        "--recall-at", "1,5,100", "--json", str(out), "--limit", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "## mini (8 documents, 3 queries), model fixture 0.0.1" in result.output
    data = json.loads(out.read_text())
    assert data["format"] == "mose-eval" and data["scale"] == "fraction"
    [suite] = data["suites"]
    assert (suite["suite"], suite["documents"], suite["queries"]) == ("mini", 8, 3)
    assert [e["exit"] for e in suite["exits"]] == [1, 3]
    for entry in (*suite["exits"], suite["pipeline"], suite["bm25"]):
        assert set(entry["recall"]) == {"1", "5", "100"}
        assert 0.0 <= entry["mrr"] <= 1.0 and 0.0 <= entry["ndcg@10"] <= 1.0
    assert suite["exits"][0]["encode_s_per_1k"] > 0 and suite["exits"][1]["relative_cost"] == 1.0
    assert (suite["pipeline"]["shallow"], suite["pipeline"]["deep"], suite["pipeline"]["k"]) == (
        1, 3, 4)
    assert set(suite["pipeline"]["shallow_recall"]) == {"4", "20", "50", "100", "200"}


def test_eval_cli_options_and_errors(model_path: Path, suite_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app(), ["eval", str(suite_path), "--model", str(model_path),
                                       "--exits", "3", "--no-pipeline", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [e["exit"] for e in data["suites"][0]["exits"]] == [3]
    assert data["suites"][0]["pipeline"] is None
    result = runner.invoke(cli_app(), ["eval", str(suite_path), "--model", str(model_path),
                                       "--exits", "2"])
    assert isinstance(result.exception, MoseError) and "no exit" in str(result.exception)
    result = runner.invoke(cli_app(), ["eval", str(suite_path), "--exits", "two"])
    assert result.exit_code == 2
    result = runner.invoke(cli_app(), ["eval", str(suite_path), "--bm25-only"])
    assert result.exit_code == 0 and "| BM25 |" in result.output


def test_resolve_encoder(model_path: Path, tmp_path: Path) -> None:
    assert resolve_encoder(model_path).exits == (1, 3)
    with pytest.raises(MoseError, match="not a model directory"):
        resolve_encoder(tmp_path)
    with pytest.raises(MoseError, match="does not exist"):
        resolve_encoder(tmp_path / "absent")


def test_search_as_shipped_fuses_bm25_like_the_searcher(encoder: ModelEncoder,
                                                        suite_path: Path) -> None:
    import sqlite3

    from mose_lsp.lexical import fts_create, fts_insert, fts_search

    suite = load_suite(suite_path)
    n = len(suite.documents)
    plain = evaluate(encoder, suite, exits=[3], pipeline=PipelineSpec(1, 3, k=n),
                     lexical_weight=0)
    assert plain.product is not None and plain.product.lexical_weight == 0
    assert plain.product.metrics.mrr == pytest.approx(plain.exits[0].metrics.mrr, abs=1e-9)
    fused = evaluate(encoder, suite, exits=[3], pipeline=PipelineSpec(1, 3, k=n),
                     lexical_weight=1.0)
    assert fused.product is not None and fused.product.lexical_weight == 1.0
    # The other rows do not depend on the weight.
    assert fused.exits[0].metrics == plain.exits[0].metrics
    assert fused.pipeline == plain.pipeline
    # Oracle: every document (k = N) scored cosine + w * BM25 / the query's best BM25, with
    # BM25 from the store's full-text index over the corpus.
    conn = sqlite3.connect(":memory:")
    fts_create(conn)
    fts_insert(conn, enumerate(d.text for d in suite.documents))
    queries = _encode_by_kind(encoder, suite, 3)
    docs = encoder.encode([d.text for d in suite.documents], "code", 3,
                          [d.lang for d in suite.documents])
    scores = queries @ docs.T
    for row, query in enumerate(suite.queries):
        ids, bm25 = fts_search(conn, identifier_tokens(query.text), n)
        if len(bm25):
            scores[row, ids] += 1.0 * bm25 / bm25[0]
    conn.close()
    want = mrr(relevant_ranks(scores, suite.relevant_indices()))
    assert fused.product.metrics.mrr == pytest.approx(want, abs=1e-9)
    assert fused.product.metrics.mrr != plain.product.metrics.mrr
    assert "BM25 w=1" in format_table([fused])
    assert results_to_json([fused])["suites"][0]["product"]["lexical_weight"] == 1.0


def _encode_by_kind(encoder: ModelEncoder, suite, exit: int) -> np.ndarray:
    """Each query with its own kind's input format, one at a time."""
    return np.stack([encoder.encode([q.text], q.kind, exit, [q.lang])[0]
                     for q in suite.queries])


def test_eval_cli_lexical_weight_option(model_path: Path, suite_path: Path) -> None:
    runner = CliRunner()
    for weight, expected in (("0", 0.0), ("0.3", 0.3)):
        result = runner.invoke(cli_app(), ["eval", str(suite_path), "--model", str(model_path),
                                           "--exits", "3", "--lexical-weight", weight,
                                           "--json", "-", "--threads", "1"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["suites"][0]["product"]["lexical_weight"] == expected
    result = runner.invoke(cli_app(), ["eval", str(suite_path), "--model", str(model_path),
                                       "--lexical-weight", "1.5"])
    assert result.exit_code != 0

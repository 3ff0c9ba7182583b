"""ModelEncoder on a small real ONNX model directory (tests/helpers_onnx.py)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers_onnx import DIM, FixtureExit, build_model_dir

from mose_lsp.encoder import ModelEncoder, open_model_dir, verify_checksums
from mose_lsp.errors import ModelDirError
from mose_lsp.model_dir import default_model_path, load_model_dir

SNIPPETS = [
    "def add(a, b):\n    return a + b",
    "x",
    "public static int add(int a, int b) { return a + b; }",
    "for i in range(n):\n    total += values[i]\n" * 6,
    "parse json text into a dictionary",
    "",
    "int sum(int *arr, int n) { int s = 0; for (int i = 0; i < n; i++) s += arr[i]; return s; }",
    "func ReadAll(r io.Reader) ([]byte, error) { return io.ReadAll(r) }",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def encoder(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelEncoder:
    cache = tmp_path_factory.mktemp("cache") / "verified.json"
    return ModelEncoder.open(model_path, threads=1, cache_path=cache)


def tokens(encoder: ModelEncoder, ids: list[int]) -> list[str]:
    return [encoder.inputs.tokenizer.id_to_token(i) for i in ids]


def test_exits_and_name(encoder: ModelEncoder) -> None:
    assert encoder.exits == (1, 3)
    assert encoder.index_exit == 1 and encoder.rerank_exit == 3
    assert encoder.name == "fixture 0.0.1"


def test_short_input_is_tokenised_whole_with_template_and_specials(encoder: ModelEncoder) -> None:
    code = "def add(a, b):\n    return a + b"
    [ids] = encoder.tokenize([code], "code", 3, ["python"])
    # Exactly what the tokenizer gives for the rendered template (no truncation needed).
    expected = encoder.inputs.tokenizer.encode(f"<sep>python: {code}<cls>").ids
    assert ids == expected
    assert tokens(encoder, ids)[:2] == ["<s>", "<sep>"]
    assert tokens(encoder, ids)[-2:] == ["<cls>", "</s>"]
    [text_ids] = encoder.tokenize(["read a file"], "text", 1)
    assert text_ids == encoder.inputs.tokenizer.encode("query: read a file").ids


def test_truncation_cuts_content_and_keeps_prefix_and_suffix(encoder: ModelEncoder) -> None:
    long_code = "def add(a, b):\n    return a + b\n" * 20
    for exit, limit in ((1, 24), (3, 40)):
        [ids] = encoder.tokenize([long_code], "code", exit, ["java"])
        names = tokens(encoder, ids)
        assert len(ids) == limit
        assert names[:2] == ["<s>", "<sep>"]
        assert names[-2:] == ["<cls>", "</s>"], "the pooled <cls> suffix must survive truncation"
        prefix = encoder.inputs.tokenizer.encode("<sep>java: ", add_special_tokens=False).ids
        assert ids[1:1 + len(prefix)] == prefix
        # The kept content is the beginning of the content's own tokenisation.
        full = encoder.inputs.tokenizer.encode(f"<sep>java: {long_code}<cls>").ids
        kept = limit - 2 - len(prefix) - 1
        assert ids[1 + len(prefix):-2] == full[1 + len(prefix):1 + len(prefix) + kept]


def test_template_longer_than_max_tokens_is_refused(tmp_path: Path) -> None:
    path = build_model_dir(tmp_path / "m", exits=(FixtureExit(1, "mean", 4),
                                                 FixtureExit(2, "mean", 64)))
    enc = ModelEncoder.open(path, threads=1, use_cache=False)
    with pytest.raises(ModelDirError, match="max_tokens"):
        enc.tokenize(["def add(a, b): return a + b"], "code", 1, ["python"])


def test_count_tokens(encoder: ModelEncoder) -> None:
    counts = encoder.count_tokens(["def add", "", "return a + b"])
    assert counts[1] == 0
    assert counts[0] == len(encoder.inputs.tokenizer.encode("def add", add_special_tokens=False).ids)
    assert all(c > 0 for c in (counts[0], counts[2]))


def test_outputs_are_normalised_float32_in_input_order(encoder: ModelEncoder) -> None:
    vectors = encoder.encode(SNIPPETS, "code", 3, ["python"] * len(SNIPPETS), batch_size=3)
    assert vectors.shape == (len(SNIPPETS), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Sorting by length for batching must not change which row belongs to which input.
    one_by_one = np.stack([encoder.encode([s], "code", 3, ["python"])[0] for s in SNIPPETS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[2]), "different inputs, different vectors"


@pytest.mark.parametrize("exit", [1, 3])
def test_results_do_not_depend_on_batch_size(encoder: ModelEncoder, exit: int) -> None:
    texts = SNIPPETS * 3
    reference = encoder.encode(texts, "code", exit, batch_size=32)
    for batch_size in (1, 2, 5, 7):
        np.testing.assert_allclose(encoder.encode(texts, "code", exit, batch_size=batch_size),
                                   reference, atol=1e-5)


def test_kind_changes_the_input(encoder: ModelEncoder) -> None:
    text = encoder.encode(["parse json text"], "text", 1)
    code = encoder.encode(["parse json text"], "code", 1)
    assert not np.allclose(text, code)


def test_empty_input_and_bad_arguments(encoder: ModelEncoder) -> None:
    assert encoder.encode([], "code", 1).shape == (0, DIM)
    with pytest.raises(ModelDirError, match="no exit at layer 2"):
        encoder.encode(["x"], "code", 2)
    with pytest.raises(ValueError, match="kind"):
        encoder.encode(["x"], "prose", 1)
    with pytest.raises(ValueError, match="languages"):
        encoder.encode(["x", "y"], "code", 1, ["python"])


def test_concurrent_encodes_agree(encoder: ModelEncoder) -> None:
    texts = SNIPPETS * 4
    reference = encoder.encode(texts, "code", 3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: encoder.encode(texts, "code", 3), range(8)))
    for result in results:
        np.testing.assert_allclose(result, reference, atol=1e-6)


def test_background_encodes_wait_while_a_query_is_in_the_foreground(
        encoder: ModelEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    texts = [f"def f{i}(x):\n    return x + {i}" for i in range(6)]
    expected = encoder.encode(texts, "code", 1)
    session = encoder.session(1)
    runs: list[str] = []
    real_run = session.run

    def counting_run(ids, mask):
        runs.append(threading.current_thread().name)
        return real_run(ids, mask)

    monkeypatch.setattr(session, "run", counting_run)
    result: list[np.ndarray] = []
    with encoder.foreground():
        worker = threading.Thread(name="bulk", target=lambda: result.append(
            encoder.encode(texts, "code", 1, background=True)))
        worker.start()
        with encoder.foreground():  # re-entrant; foreground encodes are never held back
            encoder.encode(["query"], "text", 1)
        worker.join(0.5)
        assert worker.is_alive() and "bulk" not in runs  # held before its first run
    worker.join(30)
    assert not worker.is_alive() and runs.count("bulk") >= 1
    np.testing.assert_array_equal(result[0], expected)
    # Without a foreground block, background work runs at once.
    np.testing.assert_array_equal(encoder.encode(texts, "code", 1, background=True), expected)


def test_encode_cost(encoder: ModelEncoder) -> None:
    cost = encoder.encode_cost(SNIPPETS, "code", 1, warmup=2)
    assert cost.items == len(SNIPPETS) and cost.seconds > 0
    assert cost.tokens == sum(len(i) for i in encoder.tokenize(SNIPPETS, "code", 1))
    assert cost.seconds_per_1k == pytest.approx(1000 * cost.seconds / len(SNIPPETS))


def test_last_token_pooling_reads_the_suffix(tmp_path: Path) -> None:
    path = build_model_dir(tmp_path / "m", exits=(FixtureExit(1, "last", 24),
                                                 FixtureExit(2, "last", 24)))
    enc = ModelEncoder.open(path, threads=1, use_cache=False)
    long_a = "def add(a, b):\n    return a + b\n" * 10
    long_b = "public static int add(int a, int b) { return a + b; }\n" * 10
    # Both are truncated; 'last' pooling reads the final </s> token, so with the suffix kept
    # the two inputs end identically and the (context-free) fixture gives identical vectors.
    a, b = enc.encode([long_a, long_b], "code", 1, ["python", "python"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_checksum_mismatch_is_refused(model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_path, copy)
    with open(copy / "exit_3.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelDirError, match="does not match the checksum"):
        ModelEncoder.open(copy, use_cache=False)


def test_verification_cache_skips_unchanged_files_and_rechecks_changed_ones(
        model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_path, copy)
    cache = tmp_path / "cache" / "verified.json"
    model_dir = load_model_dir(copy, verify=False)
    assert verify_checksums(model_dir, cache) == 3  # tokenizer + two exits hashed
    assert cache.is_file()
    assert verify_checksums(model_dir, cache) == 0  # all remembered
    # Same size, mtime restored: the change must still be caught (ctime/inode differ).
    target = copy / "tokenizer.json"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-2] = ord(" ") if data[-2] != ord(" ") else ord("\t")
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    with pytest.raises(ModelDirError, match="tokenizer.json does not match the checksum"):
        verify_checksums(model_dir, cache)
    with pytest.raises(ModelDirError, match="does not match the checksum"):
        open_model_dir(copy, cache_path=cache)  # the failure was not cached as a success


def test_missing_model_dirs_give_actionable_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="mose export"):
        ModelEncoder.open(tmp_path / "nowhere")
    if not default_model_path().is_dir():
        with pytest.raises(ModelDirError, match="--model"):
            ModelEncoder.open(None)


def test_broken_onnx_file_is_a_model_dir_error(model_path: Path, tmp_path: Path) -> None:
    from mose_lsp.model_dir import write_manifest

    copy = tmp_path / "model"
    shutil.copytree(model_path, copy)
    (copy / "exit_1.onnx").write_bytes(b"not an onnx file")
    manifest = load_model_dir(copy, verify=False).manifest
    write_manifest(copy, manifest)  # re-recorded checksums now match the bad file
    enc = ModelEncoder.open(copy, use_cache=False)
    with pytest.raises(ModelDirError, match="onnxruntime cannot load exit 1"):
        enc.encode(["x"], "code", 1)


def test_optimised_graph_cache_gives_the_same_vectors_and_follows_the_file(
        model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_path, copy)
    cache = tmp_path / "cache" / "verified.json"
    graphs = cache.parent / "optimized-graphs"
    plain = ModelEncoder.open(copy, threads=1, use_cache=False)
    expected = plain.encode(SNIPPETS, "code", 1)
    assert not graphs.exists()  # use_cache=False: nothing written

    first = ModelEncoder.open(copy, threads=1, cache_path=cache)
    np.testing.assert_array_equal(first.encode(SNIPPETS, "code", 1), expected)
    entries = sorted(graphs.glob("*.ort"))
    assert len(entries) == 1 and not list(graphs.glob(".*"))  # no temporary file left
    second = ModelEncoder.open(copy, threads=1, cache_path=cache)  # loads the cached graph
    np.testing.assert_array_equal(second.encode(SNIPPETS, "code", 1), expected)
    assert sorted(graphs.glob("*.ort")) == entries

    # A damaged entry is dropped and rebuilt, not an error.
    entries[0].write_bytes(b"damaged")
    third = ModelEncoder.open(copy, threads=1, cache_path=cache)
    np.testing.assert_array_equal(third.encode(SNIPPETS, "code", 1), expected)
    assert entries[0].read_bytes() != b"damaged"

    # A replaced exit file gets its own entry: the old graph is never used for it.
    (copy / "exit_1.onnx").touch()
    os.utime(copy / "exit_1.onnx", ns=(1, 1))
    ModelEncoder.open(copy, threads=1, cache_path=cache).encode(["x"], "code", 1)
    assert len(list(graphs.glob("*.ort"))) == 2

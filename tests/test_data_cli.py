"""``mose train data ...`` commands through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from mose_training.data.cli import register
from typer.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures" / "repos"
runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """mose train (test stand-in)."""

    register(root)
    return root


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pairs_then_dedup_with_decontamination(app, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = runner.invoke(app, ["data", "pairs", str(FIXTURES / "textkit"),
                                 str(FIXTURES / "gostats"), "--out", str(out),
                                 "--lang-prefix-prob", "0"])
    assert result.exit_code == 0, result.output
    records = read(out)
    summary = json.loads(result.output)
    assert summary["records"] == len(records) > 10
    manifest = json.loads((tmp_path / "pairs.manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["textkit", "gostats"]

    # plant one mined function in an evaluation suite
    planted = next(r for r in records if r["symbol"] == "Median" and r["variant"] == "docstring")
    suite = tmp_path / "eval" / "toy-dev"
    suite.mkdir(parents=True)
    (suite / "corpus.jsonl").write_text(json.dumps({"id": "1", "text": planted["code"],
                                                    "lang": "go"}) + "\n")
    (suite / "queries.jsonl").write_text(json.dumps({"id": "q", "text": "unrelated words here",
                                                     "kind": "text", "lang": "go",
                                                     "relevant": ["1"]}) + "\n")
    clean = tmp_path / "clean.jsonl"
    result = runner.invoke(app, ["data", "dedup", str(out), "--out", str(clean),
                                 "--decontaminate", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # the docstring/short variants copy it; the with_docstring variant goes with its group
    assert set(report["decontaminated_by_suite"]) == {"toy-dev"}
    assert report["decontaminated"] == 3
    kept = read(clean)
    assert all(r["group"] != planted["group"] for r in kept)
    assert report["input"] == len(records) and len(kept) == report["kept"]
    assert report["near_duplicates"] == 0  # the fixture functions are all distinct
    assert len(kept) == len(records) - 3


def test_corpus_and_icc_commands(app, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    docs = tmp_path / "docs.jsonl"
    result = runner.invoke(app, ["data", "corpus", str(FIXTURES / "textkit"),
                                 str(FIXTURES / "gostats"), "--out", str(docs)])
    assert result.exit_code == 0, result.output
    rows = read(docs)
    assert {r["repository"] for r in rows} == {"textkit", "gostats"}
    assert all(set(r) == {"repository", "path", "language", "content"} for r in rows)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["content"] for r in rows], trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<pad>", "<sep>", "<cls>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))

    result = runner.invoke(app, ["data", "corpus", str(FIXTURES / "gostats"), "--out",
                                 str(tmp_path / "go.jsonl"), "--tokenizer",
                                 str(tmp_path / "tokenizer.json"), "--seq-len", "64"])
    assert result.exit_code == 0, result.output
    import numpy as np

    packed = np.load(tmp_path / "go.packed.npy", allow_pickle=False)
    assert packed.shape[1] == 64 and packed.shape[0] == json.loads(result.output)["sequences"]

    samples = tmp_path / "icc.jsonl"
    result = runner.invoke(app, ["data", "icc", str(docs), "--tokenizer",
                                 str(tmp_path / "tokenizer.json"), "--out", str(samples),
                                 "--num", "50", "--context", "128"])
    assert result.exit_code == 0, result.output
    got = read(samples)
    assert len(got) == 50 and all(len(s["input_ids"]) == 128 for s in got)
    assert {s["icc_label"] for s in got} == {0, 1}


def test_errors_exit_with_a_message(app, tmp_path):
    result = runner.invoke(app, ["data", "pairs", "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 1 and "nothing to mine" in result.output
    result = runner.invoke(app, ["data", "dedup", str(tmp_path / "missing.jsonl"), "--out",
                                 str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    result = runner.invoke(app, ["data", "translate", str(tmp_path / "p.jsonl"), "--out",
                                 str(tmp_path / "t.jsonl")])
    assert result.exit_code == 1 and "--model-dir" in result.output

"""In-context classification samples on a two-repository fixture (Python + Go)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from mose_training.data import DataError
from mose_training.data.corpus import (
    DocumentFilter,
    Repository,
    filter_documents,
    group_by_repository,
    iter_folder_documents,
    special_tokens,
)
from mose_training.data.icc import ICCConfig, ICCDataset, SnippetPool, collate_icc, split_windows

FIXTURES = Path(__file__).parent / "fixtures" / "repos"
SPECIALS = ["<pad>", "<sep>", "<cls>", "<mask>"]


def make_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="module")
def corpus():
    docs = [d for name in ("textkit", "gostats") for d in iter_folder_documents(FIXTURES / name)]
    repos = group_by_repository(filter_documents(docs, DocumentFilter()))
    tok = make_tokenizer([d.content for r in repos for d in r.documents])
    return repos, tok


def build(corpus, n=400, **cfg) -> ICCDataset:
    repos, tok = corpus
    config = ICCConfig(**{"context_length": 96, "max_snippet_tokens": 24, "min_tail_tokens": 8,
                          **cfg})
    return ICCDataset.from_repositories(repos, tok, config, n, with_meta=True)


def texts_of(repos: list[Repository]) -> dict[str, str]:
    return {r.name: "\n".join(d.content for d in r.documents) for r in repos}


def check_sample(sample, sp, context):
    ids, mask, special = sample["input_ids"], sample["attention_mask"], sample["special_tokens_mask"]
    assert len(ids) == len(mask) == len(special) == context
    n = sum(mask)
    assert mask == [1] * n + [0] * (context - n)
    assert ids[0] == sp.sep and ids[n - 1] == sp.cls
    assert all(t == sp.pad for t in ids[n:])
    segments = sample["segments"]
    # one <sep> right before every snippet and nowhere else; <cls> only at the end
    assert [i for i, t in enumerate(ids[:n]) if t == sp.sep] == [s - 1 for _, s, _ in segments]
    assert ids[:n].count(sp.cls) == 1
    assert segments[-1][2] == n - 1
    for (_, _s, e), (_, s2, _e) in itertools.pairwise(segments):
        assert s2 == e + 1  # contiguous: snippet, <sep>, snippet
    for i in range(context):
        assert special[i] == (0 if any(s <= i < e for _, s, e in segments) else 1)
    return segments


def test_labels_balanced_and_repositories_consistent(corpus):
    repos, tok = corpus
    sp = special_tokens(tok)
    ds = build(corpus)
    files = texts_of(repos)
    labels = []
    for sample in ds:
        segments = check_sample(sample, sp, 96)
        names = [name for name, _, _ in segments]
        label = sample["icc_label"]
        labels.append(label)
        if label == 1:
            assert len(set(names)) == 1
        else:
            assert len(set(names)) == 2
            first = names[0]
            switch = names.index(next(n for n in names if n != first))
            assert all(n == first for n in names[:switch])  # split mode: A then B
            assert all(n != first for n in names[switch:])
        for name, s, e in segments:  # each snippet is text of the repository it claims
            text = tok.decode(sample["input_ids"][s:e])
            assert text and text in files[name], (name, text)
    share = sum(labels) / len(labels)
    assert 0.42 <= share <= 0.58, share


def test_fills_the_context(corpus):
    ds = build(corpus, n=100)
    fill = [sum(s["attention_mask"]) / 96 for s in ds]
    assert sum(fill) / len(fill) > 0.85


def test_deterministic_under_seed(corpus):
    a = [build(corpus, n=30, seed=7)[i]["input_ids"] for i in range(30)]
    b = [build(corpus, n=30, seed=7)[i]["input_ids"] for i in range(30)]
    c = [build(corpus, n=30, seed=8)[i]["input_ids"] for i in range(30)]
    assert a == b and a != c


def test_mixed_negatives_interleave(corpus):
    _, tok = corpus
    sp = special_tokens(tok)
    ds = build(corpus, n=200, negative_mode="mixed")
    interleaved = 0
    for sample in ds:
        segments = check_sample(sample, sp, 96)
        names = [n for n, _, _ in segments]
        if sample["icc_label"] == 0:
            assert len(set(names)) == 2
            changes = sum(a != b for a, b in itertools.pairwise(names))
            interleaved += changes > 1
        else:
            assert len(set(names)) == 1
    assert interleaved > 0


def test_snippet_content_never_holds_special_tokens(corpus):
    _, tok = corpus
    repos = [Repository("a", list(corpus[0][0].documents)),
             Repository("b", [corpus[0][1].documents[0]])]
    doc = repos[1].documents[0]
    from dataclasses import replace

    repos[1].documents[0] = replace(doc, content=doc.content + "\nx = '<sep><cls>'\n")
    pool = SnippetPool.from_repositories(repos, tok, ICCConfig(context_length=96,
                                                               max_snippet_tokens=24))
    sp = special_tokens(tok)
    for snippets in pool.snippets:
        for snip in snippets:
            assert not set(snip.tolist()) & sp.ids


def test_collate_to_tensors(corpus):
    torch = pytest.importorskip("torch")
    ds = build(corpus, n=4)
    batch = collate_icc([ds[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 96) and batch["input_ids"].dtype == torch.long
    assert batch["icc_label"].shape == (4,)


def test_one_repository_is_an_error(corpus):
    repos, tok = corpus
    with pytest.raises(DataError, match="two repositories"):
        ICCDataset.from_repositories(repos[:1], tok, ICCConfig(context_length=96), 10)


def test_split_windows_prefers_line_starts():
    ids = list(range(20))
    cuts = [3, 7, 12, 16]
    spans = split_windows(ids, cuts, cap=8)
    assert spans[0] == (0, 7)  # a line start in the second half of the first window
    assert spans[-1][1] == 20
    assert all(b - a <= 8 for a, b in spans)
    assert [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]]


def test_chunker_units_as_snippets(corpus):
    repos, tok = corpus
    config = ICCConfig(context_length=256, max_snippet_tokens=200)
    windows = SnippetPool.from_repositories(repos, tok, config, unit="window")
    chunks = SnippetPool.from_repositories(repos, tok, config, unit="chunk")
    assert len(chunks) == 2
    assert sum(chunks.sizes()) > sum(windows.sizes())  # functions are shorter than 200 tokens
    decoded = [tok.decode(s.tolist()) for s in chunks.snippets[chunks.names.index("gostats")]]
    assert any(d.lstrip().startswith("// Median returns") for d in decoded)
    sample = ICCDataset(chunks, special_tokens(tok), config, 5)[0]
    assert len(sample["input_ids"]) == 256

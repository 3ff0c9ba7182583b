"""In-context classification (ICC) samples: MoSE's repository-level contextual loss.

A sample fills a context window with code snippets joined by ``<sep>`` and closed by ``<cls>``
(the released format ``<sep> s1 <sep> s2 ... <cls>``). With probability ``p_different`` part of
the snippets come from a second repository (label 0), otherwise all come from one (label 1); a
2-way head on the pooled ``<cls>`` predicts "same repository?". The samples are plain token-id
lists, ready for the recipe's MLM masking (``special_tokens_mask`` marks what must not be masked).

Samples are a pure function of ``(seed, index)``: ``ICCDataset`` is map-style, so shuffling,
worker sharding and resuming need no state.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import DataError
from .corpus import Document, Repository, SpecialTokens, special_tokens


@dataclass(frozen=True)
class ICCConfig:
    #: Tokens per sample, ``<sep>``s and the final ``<cls>`` included (MoSE: 2048).
    context_length: int = 2048
    #: Probability that a sample mixes two repositories (label 0).
    p_different: float = 0.5
    #: Longest snippet; files are cut into line-aligned windows of at most this many tokens.
    #: None: a quarter of the context, so that a sample holds several snippets.
    max_snippet_tokens: int | None = None
    #: Shorter windows are not used as snippets.
    min_snippet_tokens: int = 8
    #: The last snippet is truncated to fill the window when at least this many tokens fit.
    min_tail_tokens: int = 16
    #: "split": the foreign snippets form the second part of the sample; "mixed": they are
    #: interleaved with the first repository's snippets at random positions.
    negative_mode: str = "split"
    #: Share of the window given to the second repository in a mixed sample (uniform range).
    foreign_share: tuple[float, float] = (0.25, 0.75)
    #: "snippets": repositories drawn in proportion to their snippet count; "uniform": equally.
    repo_weighting: str = "snippets"
    seed: int = 0

    def __post_init__(self) -> None:
        assert self.context_length >= 8, f"context_length too small: {self.context_length}"
        assert 0.0 <= self.p_different <= 1.0, f"p_different must be in [0, 1]: {self.p_different}"
        assert self.negative_mode in ("split", "mixed"), f"unknown mode {self.negative_mode!r}"
        assert self.repo_weighting in ("snippets", "uniform"), self.repo_weighting
        lo, hi = self.foreign_share
        assert 0.0 < lo <= hi < 1.0, f"foreign_share must lie in (0, 1): {self.foreign_share}"

    @property
    def snippet_cap(self) -> int:
        cap = self.max_snippet_tokens or max(self.min_snippet_tokens, self.context_length // 4)
        return min(cap, self.context_length - 2)


def _line_cuts(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Token indices where a new line starts (a cut there keeps lines whole)."""
    cuts = []
    for i, (start, _end) in enumerate(offsets):
        if i and start < len(text) and (text[start] == "\n" or text[start - 1] == "\n"):
            cuts.append(i)
    return cuts


def split_windows(ids: Sequence[int], cuts: Sequence[int], cap: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` windows of at most ``cap`` tokens, cut at a line start in the
    second half of each window when there is one."""
    spans, start, n = [], 0, len(ids)
    while start < n:
        end = start + cap
        if end >= n:
            spans.append((start, n))
            break
        j = bisect.bisect_right(cuts, end) - 1
        if j >= 0 and cuts[j] > start + cap // 2:
            end = cuts[j]
        spans.append((start, end))
        start = end
    return spans


class SnippetPool:
    """Tokenised snippets grouped by repository (only repositories with at least one)."""

    def __init__(self, names: list[str], snippets: list[list[np.ndarray]]):
        assert len(names) == len(snippets)
        keep = [i for i, s in enumerate(snippets) if s]
        self.names = [names[i] for i in keep]
        self.snippets = [snippets[i] for i in keep]

    @classmethod
    def from_repositories(cls, repos: Iterable[Repository], tokenizer, config: ICCConfig,
                          unit: str = "window") -> SnippetPool:
        """Cut each repository's files into snippets and tokenise them.

        ``unit="window"``: line-aligned windows of the whole file (every token is used);
        ``unit="chunk"``: the runtime chunker's function/class chunks (what the product embeds),
        files it cannot parse falling back to windows.
        """
        assert unit in ("window", "chunk"), f"unknown snippet unit {unit!r}"
        cap = config.snippet_cap
        # Code may spell "<sep>" or "<mask>" literally: such text must not become a special token.
        specials = np.asarray(sorted(_special_ids(tokenizer)), dtype=np.int64)
        names, pools = [], []
        for repo in repos:
            texts: list[str] = []
            for doc in repo.documents:
                texts.extend(_chunk_texts(doc) if unit == "chunk" else [doc.content])
            snippets: list[np.ndarray] = []
            for start in range(0, len(texts), 256):
                batch = texts[start:start + 256]
                for text, enc in zip(batch, tokenizer.encode_batch(batch,
                                                                   add_special_tokens=False)):
                    ids = enc.ids
                    for a, b in split_windows(ids, _line_cuts(text, enc.offsets), cap):
                        window = np.asarray(ids[a:b], dtype=np.int32)
                        if len(specials):
                            window = window[~np.isin(window, specials)]
                        if len(window) >= config.min_snippet_tokens:
                            snippets.append(window)
            names.append(repo.name)
            pools.append(snippets)
        return cls(names, pools)

    def __len__(self) -> int:
        return len(self.names)

    def sizes(self) -> list[int]:
        return [len(s) for s in self.snippets]


def _special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special added tokens."""
    decoder = getattr(tokenizer, "get_added_tokens_decoder", None)
    if decoder is None:
        return set()
    return {i for i, tok in decoder().items() if getattr(tok, "special", False)}


def _chunk_texts(doc: Document) -> list[str]:
    """Function/class chunks of a file from the runtime chunker, or the whole file."""
    try:
        from mose_lsp.chunker import chunk_text
    except ImportError:
        return [doc.content]
    if doc.language is None:
        return [doc.content]
    try:
        chunks = chunk_text(doc.path, doc.content, doc.language)
    except Exception:  # noqa: BLE001 - a file the chunker rejects is still a snippet source
        return [doc.content]
    return [c.text for c in chunks] or [doc.content]


class ICCSampler:
    """Builds sample ``i`` deterministically from ``(config.seed, i)``."""

    def __init__(self, pool: SnippetPool, specials: SpecialTokens, config: ICCConfig):
        if len(pool) < 2 and config.p_different > 0:
            raise DataError(f"ICC needs snippets from at least two repositories, got {len(pool)}: "
                            "add repositories or lower the snippet minimum")
        self.pool, self.sp, self.config = pool, specials, config
        weights = pool.sizes() if config.repo_weighting == "snippets" else [1] * len(pool)
        self._cum = np.cumsum(weights).tolist()

    def _pick_repo(self, rng: random.Random, exclude: int | None = None) -> int:
        while True:
            r = bisect.bisect_right(self._cum, rng.random() * self._cum[-1])
            r = min(r, len(self._cum) - 1)
            if r != exclude:
                return r

    def _snippet_order(self, rng: random.Random, repo: int) -> Iterator[int]:
        """Snippet indices of ``repo`` in random order, without repetition."""
        n = len(self.pool.snippets[repo])
        if n <= 4096:
            order = list(range(n))
            rng.shuffle(order)
            yield from order
            return
        seen: set[int] = set()
        while len(seen) < n:  # sparse draw for big repositories
            k = rng.randrange(n)
            if k not in seen:
                seen.add(k)
                yield k

    def sample(self, index: int, with_meta: bool = False) -> dict[str, Any]:
        cfg = self.config
        rng = random.Random(f"icc:{cfg.seed}:{index}")
        label = 0 if rng.random() < cfg.p_different else 1
        budget = cfg.context_length - 1  # the final <cls>
        repo_a = self._pick_repo(rng)
        pieces: list[tuple[int, np.ndarray]] = []  # (repo, snippet tokens)
        if label == 1:
            self._fill(rng, repo_a, budget, pieces, tail=True)
        else:
            repo_b = self._pick_repo(rng, exclude=repo_a)
            share = rng.uniform(*cfg.foreign_share)
            if cfg.negative_mode == "split":
                used = self._fill(rng, repo_a, int(budget * (1.0 - share)), pieces, tail=False)
                self._fill(rng, repo_b, budget - used, pieces, tail=True)
            else:
                self._mixed(rng, repo_a, repo_b, share, budget, pieces)
        return self._assemble(pieces, label, with_meta)

    def _fill(self, rng: random.Random, repo: int, budget: int,
              pieces: list[tuple[int, np.ndarray]], tail: bool) -> int:
        """Append snippets of ``repo`` while they fit in ``budget`` tokens (each costs its length
        plus one ``<sep>``); the first one is always taken (truncated if needed), the last one is
        truncated to fill when ``tail`` allows it. Returns the tokens used."""
        used, taken = 0, 0
        snippets = self.pool.snippets[repo]
        for k in self._snippet_order(rng, repo):
            snip = snippets[k]
            room = budget - used
            if room < 2:
                break
            if 1 + len(snip) <= room:
                pieces.append((repo, snip))
                used += 1 + len(snip)
                taken += 1
                continue
            if taken == 0 or (tail and room - 1 >= self.config.min_tail_tokens):
                pieces.append((repo, snip[:room - 1]))
                used += room
            break
        return used

    def _mixed(self, rng: random.Random, repo_a: int, repo_b: int, share: float, budget: int,
               pieces: list[tuple[int, np.ndarray]]) -> int:
        """Interleave snippets of two repositories; each snippet slot comes from ``repo_b`` with
        probability ``share``; both appear at least once."""
        orders = {repo_a: self._snippet_order(rng, repo_a), repo_b: self._snippet_order(rng, repo_b)}
        used, seen = 0, set()
        exhausted: set[int] = set()
        while used < budget - 1 and len(exhausted) < 2:
            if len(seen) == 1 and (budget - used) < budget // 2:
                repo = repo_b if repo_a in seen else repo_a  # make sure both appear
            else:
                repo = repo_b if rng.random() < share else repo_a
            if repo in exhausted:
                repo = repo_a if repo == repo_b else repo_b
            k = next(orders[repo], None)
            if k is None:
                exhausted.add(repo)
                continue
            snip = self.pool.snippets[repo][k]
            room = budget - used
            if 1 + len(snip) > room:
                need_other = len(seen) < 2 and repo not in seen
                if need_other or room - 1 >= self.config.min_tail_tokens:
                    pieces.append((repo, snip[:room - 1]))
                    seen.add(repo)
                    used += room
                break
            pieces.append((repo, snip))
            seen.add(repo)
            used += 1 + len(snip)
        if len(seen) < 2:  # one long snippet took the window: shorten it, add the other repo
            missing = repo_b if repo_a in seen else repo_a
            want = 1 + self.config.min_snippet_tokens
            if budget - used < want:
                repo, snip = pieces[-1]
                keep = max(1, len(snip) - (want - (budget - used)))
                used -= len(snip) - keep
                pieces[-1] = (repo, snip[:keep])
            k = next(orders[missing])  # not seen, so not exhausted
            snip = self.pool.snippets[missing][k][:budget - used - 1]
            pieces.append((missing, snip))
            used += 1 + len(snip)
        return used

    def _assemble(self, pieces: list[tuple[int, np.ndarray]], label: int,
                  with_meta: bool) -> dict[str, Any]:
        cfg, sp = self.config, self.sp
        length = cfg.context_length
        ids = np.full(length, sp.pad, dtype=np.int64)
        special = np.ones(length, dtype=np.int8)
        pos, segments = 0, []
        for repo, snip in pieces:
            ids[pos] = sp.sep
            pos += 1
            ids[pos:pos + len(snip)] = snip
            special[pos:pos + len(snip)] = 0
            segments.append((self.pool.names[repo], pos, pos + len(snip)))
            pos += len(snip)
        assert pos < length, f"sample overflows its context ({pos + 1} > {length})"
        ids[pos] = sp.cls
        n = pos + 1
        mask = np.zeros(length, dtype=np.int64)
        mask[:n] = 1
        repos = {seg[0] for seg in segments}
        assert (len(repos) == 1) == (label == 1), "label disagrees with the snippets' repositories"
        out: dict[str, Any] = {
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "special_tokens_mask": special.tolist(),
            "icc_label": label,
        }
        if with_meta:
            out["segments"] = segments
        return out


class ICCDataset:
    """Map-style dataset of ICC samples (works with ``torch.utils.data.DataLoader`` as is).

    Each item: ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (lists of
    ``context_length`` ints; right-padded) and ``icc_label`` (1 = one repository, 0 = two).
    """

    def __init__(self, pool: SnippetPool, specials: SpecialTokens, config: ICCConfig,
                 num_samples: int, with_meta: bool = False):
        self.sampler = ICCSampler(pool, specials, config)
        self.num_samples = num_samples
        self.with_meta = with_meta

    @classmethod
    def from_repositories(cls, repos: Iterable[Repository], tokenizer, config: ICCConfig,
                          num_samples: int, unit: str = "window",
                          specials: SpecialTokens | None = None,
                          with_meta: bool = False) -> ICCDataset:
        pool = SnippetPool.from_repositories(repos, tokenizer, config, unit=unit)
        return cls(pool, specials or special_tokens(tokenizer), config, num_samples, with_meta)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return self.sampler.sample(index, with_meta=self.with_meta)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_samples):
            yield self[i]


def collate_icc(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into ``torch`` tensors (``(B, L)`` int64, ``icc_label`` ``(B,)``)."""
    import torch

    keys = ("input_ids", "attention_mask", "special_tokens_mask", "icc_label")
    return {k: torch.tensor([item[k] for item in batch], dtype=torch.long) for k in keys}

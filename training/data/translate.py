"""SynthCoNL-style translation: mined functions translated into other languages by an LLM.

MoSE's SynthCoNL took CodeSearchNet (docstring, function) pairs and had an instruction-tuned code
LLM (Qwen2.5-Coder-7B-Instruct) translate each function into another of Go, Java, JavaScript,
PHP, Python, Ruby, C++ and C, giving (docstring, code, translation) triplets and cross-language
code -> code pairs. Here:

- ``Translator`` is the pluggable protocol: ``translate(requests) -> list[str | None]`` (raw
  model output; None when a request failed). Two implementations:
  ``HFCausalLMTranslator`` (a local transformers causal LM folder; its chat template when it has
  one, else a plain prompt) and ``OpenAICompatibleTranslator`` (``POST {base_url}/chat/completions``
  with the standard JSON body, standard library HTTP, retries with backoff).
- ``build_translations`` plans requests from mined pair records, extracts the fenced code block
  of each answer and keeps it only when it PARSES in the target language (tree-sitter: no ERROR
  or MISSING node, at least one function), emitting triplets and ``CodePair`` records.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import DataError
from .pairs import CodePair, SourceInfo, parses_cleanly

#: The languages SynthCoNL translated between.
SYNTHCONL_LANGUAGES = ("go", "java", "javascript", "php", "python", "ruby", "cpp", "c")

DISPLAY = {"python": "Python", "javascript": "JavaScript", "typescript": "TypeScript",
           "tsx": "TypeScript (TSX)", "go": "Go", "rust": "Rust", "java": "Java", "c": "C",
           "cpp": "C++", "csharp": "C#", "ruby": "Ruby", "php": "PHP", "lua": "Lua"}
#: Fence tags a model may use for each language (the first is the one we ask for).
FENCE_TAGS = {"python": ("python", "py", "python3"), "javascript": ("javascript", "js", "jsx"),
              "typescript": ("typescript", "ts"), "tsx": ("tsx", "typescript", "ts"),
              "go": ("go", "golang"), "rust": ("rust", "rs"), "java": ("java",), "c": ("c", "h"),
              "cpp": ("cpp", "c++", "cxx", "cc", "hpp"), "csharp": ("csharp", "cs", "c#"),
              "ruby": ("ruby", "rb"), "php": ("php",), "lua": ("lua",)}

SYSTEM_PROMPT = ("You are an expert software engineer who translates code between programming "
                 "languages faithfully and idiomatically.")


@dataclass(frozen=True)
class TranslationRequest:
    code: str
    src_lang: str
    dst_lang: str
    docstring: str | None = None


def user_prompt(req: TranslationRequest) -> str:
    src, dst = DISPLAY.get(req.src_lang, req.src_lang), DISPLAY.get(req.dst_lang, req.dst_lang)
    tag = FENCE_TAGS.get(req.src_lang, (req.src_lang,))[0]
    what = f" It does the following: {req.docstring}" if req.docstring else ""
    return (f"Translate this {src} function into {dst}.{what}\n"
            f"Keep its behaviour and its name (in {dst}'s naming style); write one complete, "
            f"self-contained {dst} function without comments, no explanations. Answer with the "
            f"{dst} code in a single fenced code block.\n\n```{tag}\n{req.code}\n```")


def chat_messages(req: TranslationRequest, system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user_prompt(req)}]


_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code_block(text: str | None, lang: str) -> str | None:
    """The code of the fenced block in ``text`` tagged as ``lang`` (else the first block), or
    None when there is no fenced block. An unclosed final block (a cut-off answer) counts."""
    if not text:
        return None
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return None
    tags = FENCE_TAGS.get(lang, (lang,))
    for tag, code in blocks:
        if tag in tags:
            return code.strip("\n")
    return blocks[0][1].strip("\n")


@runtime_checkable
class Translator(Protocol):
    """Anything that turns translation requests into raw model answers."""

    #: Recorded with every output, e.g. ``{"kind": "openai", "model": "qwen2.5-coder-7b"}``.
    info: dict[str, str]

    def translate(self, requests: Sequence[TranslationRequest]) -> list[str | None]:
        """One answer per request, in order; None for a request that failed."""
        ...


# ---------------------------------------------------------------------------------------------
# A local transformers model


class HFCausalLMTranslator:
    """A causal LM and its tokenizer from a local folder (never a hub download).

    With a chat template the messages go through it; without one the plain prompt ends with an
    opened code fence, and the answer is read as the block's continuation.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str | None = None,
                 max_new_tokens: int = 512, do_sample: bool = False, temperature: float = 0.2,
                 top_p: float = 0.95, batch_size: int = 4, seed: int = 0,
                 system_prompt: str = SYSTEM_PROMPT, max_prompt_tokens: int = 2048):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise DataError(f"no model folder at {str(model_dir)!r}")
        self.device, self.dtype = device, dtype
        self.max_new_tokens, self.do_sample = max_new_tokens, do_sample
        self.temperature, self.top_p = temperature, top_p
        self.batch_size, self.seed = batch_size, seed
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.info = {"kind": "hf", "model": self.model_dir.name,
                     "decoding": "sample" if do_sample else "greedy"}
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            from mose_lsp.errors import MissingExtraError

            raise MissingExtraError("translation with a local model", "train", err.name) from err
        tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        tok.padding_side = "left"  # generation continues after the prompt
        tok.truncation_side = "left"  # an over-long prompt keeps its end (the answer's start)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise DataError(f"the tokenizer in {self.model_dir} has neither a pad nor an eos "
                                "token; set one in its tokenizer_config.json")
            tok.pad_token = tok.eos_token
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.dtype:
            kwargs["dtype"] = getattr(torch, self.dtype)
        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), **kwargs)
        model.to(self.device).eval()
        self._model, self._tokenizer = model, tok

    def prompt(self, req: TranslationRequest) -> tuple[str, str]:
        """(prompt text, prefix to put before the generated text when reading the answer)."""
        self._load()
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(chat_messages(req, self.system_prompt),
                                           tokenize=False, add_generation_prompt=True)
            return text, ""
        opener = f"```{FENCE_TAGS.get(req.dst_lang, (req.dst_lang,))[0]}\n"
        dst = DISPLAY.get(req.dst_lang, req.dst_lang)
        text = f"{self.system_prompt}\n\n{user_prompt(req)}\n\n{dst} translation:\n{opener}"
        return text, opener

    def translate(self, requests: Sequence[TranslationRequest]) -> list[str | None]:
        import torch

        self._load()
        model, tok = self._model, self._tokenizer
        out: list[str | None] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            prompts = [self.prompt(r) for r in batch]
            enc = tok([p for p, _ in prompts], return_tensors="pt", padding=True,
                      truncation=True, max_length=self.max_prompt_tokens,
                      add_special_tokens=False).to(self.device)
            gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                   "do_sample": self.do_sample, "pad_token_id": tok.pad_token_id}
            if self.do_sample:
                gen.update(temperature=self.temperature, top_p=self.top_p)
                torch.manual_seed(self.seed + start)
            with torch.no_grad():
                ids = model.generate(**enc, **gen)
            new = ids[:, enc["input_ids"].shape[1]:]
            for (_, prefix), row in zip(prompts, new):
                out.append(prefix + tok.decode(row, skip_special_tokens=True))
        return out


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, TGI, Ollama, hosted APIs)


RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAICompatibleTranslator:
    """``POST {base_url}/chat/completions`` with ``{model, messages, temperature, max_tokens}``.

    The API key is read from the environment variable ``api_key_env`` (optional for local
    servers). Connection errors, timeouts and the statuses in ``RETRY_STATUS`` are retried up to
    ``max_retries`` times with exponential backoff (``Retry-After`` honoured); other HTTP errors
    fail the request. ``concurrency`` requests run at once.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 1.0,
                 max_backoff: float = 60.0, temperature: float = 0.0, max_tokens: int = 1024,
                 concurrency: int = 4, system_prompt: str = SYSTEM_PROMPT,
                 extra_body: dict[str, Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if not re.match(r"^https?://", base_url):
            raise DataError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.concurrency = max(1, concurrency)
        self.system_prompt = system_prompt
        self.extra_body = extra_body or {}
        self.sleep = sleep
        self.info = {"kind": "openai-compatible", "model": model}
        self.errors: Counter = Counter()

    def body(self, req: TranslationRequest) -> dict[str, Any]:
        return {"model": self.model, "messages": chat_messages(req, self.system_prompt),
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                **self.extra_body}

    def _post(self, body: dict[str, Any]) -> str | None:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * (2 ** attempt))
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers,
                                                 method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return _answer_text(payload)
            except urllib.error.HTTPError as err:
                if err.code not in RETRY_STATUS:
                    self.errors[f"http_{err.code}"] += 1
                    return None
                self.errors[f"retry_http_{err.code}"] += 1
                after = err.headers.get("Retry-After") if err.headers else None
                if after and after.strip().isdigit():
                    wait = min(self.max_backoff, float(after))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                self.errors[f"retry_{type(err).__name__}"] += 1
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                self.errors["bad_response"] += 1
                return None
            if attempt < self.max_retries:
                self.sleep(wait)
        self.errors["gave_up"] += 1
        return None

    def translate(self, requests: Sequence[TranslationRequest]) -> list[str | None]:
        bodies = [self.body(r) for r in requests]
        if self.concurrency == 1 or len(bodies) <= 1:
            return [self._post(b) for b in bodies]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._post, bodies))


def _answer_text(payload: dict[str, Any]) -> str | None:
    choice = payload["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content", choice.get("text"))
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else None


# ---------------------------------------------------------------------------------------------
# Building the dataset


@dataclass(frozen=True)
class TranslationConfig:
    #: Target languages (a function is never translated into its own language).
    targets: tuple[str, ...] = SYNTHCONL_LANGUAGES
    #: Target languages per function, drawn deterministically from (seed, group).
    per_function: int = 1
    seed: int = 0
    #: Translate only records of these variants (the code without its documentation).
    variants: tuple[str, ...] = ("docstring",)
    #: Skip functions longer than this (characters).
    max_code_chars: int = 4000
    #: Requests sent to the translator at once.
    batch_size: int = 16
    #: Stop after this many functions (None: all).
    limit: int | None = None


@dataclass
class TranslationStats:
    functions: int = 0
    requests: int = 0
    accepted: Counter = field(default_factory=Counter)  # "src->dst"
    rejected: Counter = field(default_factory=Counter)  # reason

    def to_dict(self) -> dict[str, Any]:
        return {"functions": self.functions, "requests": self.requests,
                "accepted": dict(sorted(self.accepted.items())),
                "accepted_total": sum(self.accepted.values()),
                "rejected": dict(self.rejected)}


def plan_requests(records: Iterable[dict[str, Any]], cfg: TranslationConfig,
                  ) -> Iterator[tuple[dict[str, Any], TranslationRequest]]:
    """(record, request) for each function and each of its drawn target languages."""
    seen: set[str] = set()
    n = 0
    for rec in records:
        if rec.get("kind", "text") != "text" or rec.get("variant", "docstring") not in cfg.variants:
            continue
        key = rec.get("group") or f"{rec.get('repo')}:{rec.get('path')}:{rec.get('symbol')}"
        if key in seen:
            continue
        seen.add(key)
        src = rec.get("lang")
        code = rec.get("code", "")
        if not src or not code or len(code) > cfg.max_code_chars:
            continue
        options = [t for t in cfg.targets if t != src]
        if not options:
            continue
        rng = random.Random(f"translate:{cfg.seed}:{key}")
        for dst in rng.sample(options, min(cfg.per_function, len(options))):
            yield rec, TranslationRequest(code=code, src_lang=src, dst_lang=dst,
                                          docstring=rec.get("query"))
        n += 1
        if cfg.limit is not None and n >= cfg.limit:
            return


def check_translation(answer: str | None, req: TranslationRequest) -> tuple[str | None, str | None]:
    """(translated code, None) when usable, else (None, reason)."""
    if answer is None:
        return None, "request_failed"
    code = extract_code_block(answer, req.dst_lang)
    if code is None or not code.strip():
        return None, "no_code_block"
    if code.strip() == req.code.strip():
        return None, "copy"
    if not parses_cleanly(code, req.dst_lang, require_function=False):
        return None, "parse_error"
    if not parses_cleanly(code, req.dst_lang, require_function=True):
        return None, "no_function"
    return code, None


def build_translations(records: Iterable[dict[str, Any]], translator: Translator,
                       cfg: TranslationConfig = TranslationConfig(),
                       stats: TranslationStats | None = None,
                       ) -> Iterator[tuple[dict[str, Any], CodePair]]:
    """Translate mined functions; yield (triplet record, code pair) for each answer that parses.

    The triplet is ``{docstring, code, lang, translation, translation_lang, repo, path, symbol,
    group, source, generator}``; the code pair shares the function's ``group``.
    """
    stats = stats if stats is not None else TranslationStats()
    pending: list[tuple[dict[str, Any], TranslationRequest]] = []
    groups: set[str] = set()

    def flush() -> Iterator[tuple[dict[str, Any], CodePair]]:
        answers = translator.translate([req for _, req in pending])
        if len(answers) != len(pending):
            raise DataError(f"the translator returned {len(answers)} answers for "
                            f"{len(pending)} requests")
        for (rec, req), answer in zip(pending, answers):
            code, why = check_translation(answer, req)
            if why:
                stats.rejected[why] += 1
                continue
            stats.accepted[f"{req.src_lang}->{req.dst_lang}"] += 1
            source = rec.get("source") or {}
            triplet = {
                "docstring": rec.get("query"), "code": req.code, "lang": req.src_lang,
                "translation": code, "translation_lang": req.dst_lang,
                "repo": rec.get("repo"), "path": rec.get("path"), "symbol": rec.get("symbol"),
                "group": rec.get("group"), "source": source,
                "generator": dict(translator.info),
            }
            pair = CodePair(query=req.code, code=code, lang_query=req.src_lang,
                            lang=req.dst_lang, repo=rec.get("repo", ""),
                            path=rec.get("path", ""), symbol=rec.get("symbol", ""),
                            group=rec.get("group", ""),
                            source=SourceInfo(source.get("name", ""), source.get("version")),
                            generator=dict(translator.info))
            yield triplet, pair
        pending.clear()

    for rec, req in plan_requests(records, cfg):
        key = rec.get("group") or id(rec)
        if key not in groups:
            groups.add(key)
            stats.functions += 1
        stats.requests += 1
        pending.append((rec, req))
        if len(pending) >= cfg.batch_size:
            yield from flush()
    if pending:
        yield from flush()

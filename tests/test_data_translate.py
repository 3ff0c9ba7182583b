"""SynthCoNL translation: a tiny random local LM and a fake OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mose_training.data.translate import (
    HFCausalLMTranslator,
    OpenAICompatibleTranslator,
    TranslationConfig,
    TranslationRequest,
    TranslationStats,
    Translator,
    build_translations,
    check_translation,
    extract_code_block,
    plan_requests,
)

PY_FUNC = '''def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value'''

GO_OK = '''func Clamp(value, low, high float64) float64 {
	if value < low {
		return low
	}
	if value > high {
		return high
	}
	return value
}'''

GO_BROKEN = '''func Clamp(value, low, high float64) float64 {
	if value < low {
		return low
	return value
'''

JAVA_OK = '''static double clamp(double value, double low, double high) {
    if (value < low) return low;
    if (value > high) return high;
    return value;
}'''


def pair_records(n: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        base = {"kind": "text", "lang": "python", "repo": "r", "path": f"m{i}.py",
                "symbol": f"clamp{i}", "group": f"g{i}", "source": {"name": "r", "version": "1"}}
        out.append({**base, "variant": "docstring", "query": "Clamp a value into a range.",
                    "code": PY_FUNC.replace("clamp", f"clamp{i}")})
        out.append({**base, "variant": "short", "query": "clamp a value",
                    "code": PY_FUNC.replace("clamp", f"clamp{i}")})
    return out


# ---------------------------------------------------------------------------------------------
# Extraction and the parse filter


def test_extract_code_block_prefers_the_target_language():
    answer = "Sure!\n```python\nprint(1)\n```\nIn Go:\n```go\n" + GO_OK + "\n```\nDone."
    assert extract_code_block(answer, "go") == GO_OK
    assert extract_code_block("```\n" + GO_OK + "\n```", "go") == GO_OK  # untagged
    assert extract_code_block("```golang\n" + GO_OK, "go") == GO_OK  # cut-off answer
    assert extract_code_block("func Clamp() {}", "go") is None  # no fence


def test_check_translation_keeps_only_parsing_functions():
    req = TranslationRequest(PY_FUNC, "python", "go")
    assert check_translation(f"```go\n{GO_OK}\n```", req) == (GO_OK, None)
    assert check_translation(f"```go\n{GO_BROKEN}\n```", req) == (None, "parse_error")
    assert check_translation("```go\nvar x = 1\n```", req) == (None, "no_function")
    assert check_translation("I cannot do that.", req) == (None, "no_code_block")
    assert check_translation(None, req) == (None, "request_failed")
    assert check_translation(f"```python\n{PY_FUNC}\n```", TranslationRequest(
        PY_FUNC, "python", "python")) == (None, "copy")


def test_plan_requests_one_function_once_with_seeded_targets():
    cfg = TranslationConfig(targets=("go", "java", "python", "cpp"), per_function=2, seed=3)
    planned = list(plan_requests(pair_records(3), cfg))
    assert len(planned) == 6  # 3 functions (short variants skipped) x 2 targets
    assert all(req.dst_lang != "python" and req.src_lang == "python" for _, req in planned)
    assert [r.dst_lang for _, r in planned] == [r.dst_lang for _, r in plan_requests(
        pair_records(3), cfg)]
    assert planned[0][1].docstring == "Clamp a value into a range."


# ---------------------------------------------------------------------------------------------
# A tiny randomly initialised causal LM (garbage outputs: the filter must reject them all)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PY_FUNC, GO_OK, JAVA_OK, "Translate this function into Go."],
                            trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=fast.vocab_size, n_positions=1024, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_random_lm_runs_and_its_garbage_is_rejected(tiny_lm):
    translator = HFCausalLMTranslator(tiny_lm, max_new_tokens=24, batch_size=2)
    assert isinstance(translator, Translator)
    prompt, prefix = translator.prompt(TranslationRequest(PY_FUNC, "python", "go"))
    assert prefix == "```go\n" and prompt.endswith("```go\n")  # no chat template: plain prompt
    stats = TranslationStats()
    out = list(build_translations(pair_records(3), translator,
                                  TranslationConfig(targets=("go", "java"), batch_size=2), stats))
    assert out == []
    assert stats.requests == 3 and stats.functions == 3
    assert sum(stats.rejected.values()) == 3
    assert set(stats.rejected) <= {"parse_error", "no_function", "no_code_block"}


def test_random_lm_with_a_chat_template(tiny_lm, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "chat-lm"
    shutil.copytree(tiny_lm, folder)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(folder)
    translator = HFCausalLMTranslator(folder, max_new_tokens=8, do_sample=True, seed=1)
    prompt, prefix = translator.prompt(TranslationRequest(PY_FUNC, "python", "java"))
    assert prefix == "" and prompt.startswith("<system>") and prompt.endswith("<assistant>")
    answers = translator.translate([TranslationRequest(PY_FUNC, "python", "java")])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert check_translation(answers[0], TranslationRequest(PY_FUNC, "python", "java"))[0] is None


# ---------------------------------------------------------------------------------------------
# A fake OpenAI-compatible endpoint on loopback


class FakeServer:
    """Answers /v1/chat/completions; fails the first ``fail_first`` requests with a 500."""

    def __init__(self, answers: dict[str, str], fail_first: int = 0):
        self.answers, self.fail_first = answers, fail_first
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                outer.headers.append(dict(self.headers))
                if len(outer.requests) <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "overloaded"}')
                    return
                prompt = body["messages"][-1]["content"]
                dst = next(lang for lang in outer.answers if f"into {lang}." in prompt)
                reply = {"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": outer.answers[dst]}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


ANSWERS = {"Go": f"Here you go:\n```go\n{GO_OK}\n```", "Java": f"```java\n{JAVA_OK}\n```",
           "C++": "```cpp\nint clamp(int v, int lo, int hi) {\n  if (v < lo) return lo;\n```"}


def test_endpoint_request_shape_and_parse_filter(monkeypatch):
    monkeypatch.setenv("MOSE_TEST_KEY", "sk-test")
    with FakeServer(ANSWERS) as server:
        translator = OpenAICompatibleTranslator(server.url, "coder-7b", api_key_env="MOSE_TEST_KEY",
                                                max_tokens=256, concurrency=2, timeout=10)
        stats = TranslationStats()
        cfg = TranslationConfig(targets=("go", "java", "cpp"), per_function=3, batch_size=4)
        out = list(build_translations(pair_records(2), translator, cfg, stats))
    assert len(server.requests) == 6
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    body = req["body"]
    assert body["model"] == "coder-7b" and body["max_tokens"] == 256 and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "```python\ndef clamp0" in body["messages"][1]["content"] or \
        "```python\ndef clamp1" in body["messages"][1]["content"]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    # Go and Java parse; the cut-off C++ answer does not
    assert stats.accepted == {"python->go": 2, "python->java": 2}
    assert stats.rejected == {"parse_error": 2}
    triplet, pair = out[0]
    assert set(triplet) >= {"docstring", "code", "translation", "lang", "translation_lang"}
    assert triplet["docstring"] == "Clamp a value into a range."
    assert triplet["generator"] == {"kind": "openai-compatible", "model": "coder-7b"}
    rec = pair.to_record()
    assert rec["kind"] == "code" and rec["lang_query"] == "python"
    assert rec["lang"] in ("go", "java") and rec["query"].startswith("def clamp")
    assert rec["group"] == triplet["group"]


def test_endpoint_retries_on_500():
    waits: list[float] = []
    with FakeServer(ANSWERS, fail_first=2) as server:
        translator = OpenAICompatibleTranslator(server.url, "m", api_key_env=None, backoff=0.5,
                                                max_retries=3, concurrency=1, sleep=waits.append)
        answers = translator.translate([TranslationRequest(PY_FUNC, "python", "go")])
    assert answers == [ANSWERS["Go"]]
    assert len(server.requests) == 3 and waits == [0.5, 1.0]
    assert translator.errors["retry_http_500"] == 2
    assert "Authorization" not in server.headers[0]


def test_endpoint_gives_up_and_counts_failures():
    waits: list[float] = []
    with FakeServer(ANSWERS, fail_first=100) as server:
        translator = OpenAICompatibleTranslator(server.url, "m", api_key_env=None, backoff=0.1,
                                                max_retries=2, sleep=waits.append)
        stats = TranslationStats()
        out = list(build_translations(pair_records(1), translator,
                                      TranslationConfig(targets=("go",)), stats))
    assert out == [] and stats.rejected == {"request_failed": 1}
    assert len(server.requests) == 3 and translator.errors["gave_up"] == 1


def test_unreachable_endpoint_is_retried_then_fails():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    translator = OpenAICompatibleTranslator(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None,
                                            max_retries=1, timeout=2, sleep=waits.append)
    assert translator.translate([TranslationRequest(PY_FUNC, "python", "go")]) == [None]
    assert len(waits) == 1


def test_translate_command_writes_triplets_code_pairs_and_manifest(tmp_path):
    import typer
    from mose_training.data.cli import register
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """stand-in for mose train"""

    register(app)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_records(2)))
    out = tmp_path / "synth.jsonl"
    with FakeServer(ANSWERS) as server:
        result = CliRunner().invoke(app, [
            "data", "translate", str(pairs), "--out", str(out), "--base-url", server.url,
            "--model", "coder", "--targets", "go,java", "--per-function", "2",
            "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    triplets = [json.loads(x) for x in out.read_text().splitlines()]
    code_pairs = [json.loads(x) for x in (tmp_path / "synth.code_pairs.jsonl")
                  .read_text().splitlines()]
    assert len(triplets) == len(code_pairs) == 4
    assert {p["lang"] for p in code_pairs} == {"go", "java"}
    manifest = json.loads((tmp_path / "synth.manifest.json").read_text())
    assert manifest["accepted_total"] == 4 and manifest["translator"]["model"] == "coder"

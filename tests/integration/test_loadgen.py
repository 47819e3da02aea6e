"""tools/loadgen.py against a real engram-server on the default model: every
request succeeds at each concurrency level, the token count is exact with
ignore_eos (and agrees with the server's own counter), the percentiles are
ordered, and a run whose requests fail exits 1; the same through its
standard-library HTTP client, and with token-id prompts on a synthetic model
(no tokenizer: chunks without text still time the tokens)."""
import json
import subprocess
import sys

import requests

from conftest import SOURCE
from serverutil import API_KEY, Server, metric

MODEL = SOURCE / "models" / "engram-lexicon"
LOADGEN = SOURCE / "tools" / "loadgen.py"


def loadgen(url, *args, timeout=120):
    return subprocess.run([sys.executable, str(LOADGEN), "--base-url", url + "/v1", "--api-key", API_KEY,
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)


def ordered(d):
    return d["p50"] is not None and 0 <= d["p50"] <= d["p90"] <= d["p99"]


def test_loadgen_levels_and_counts(tmp_path):
    s = Server("--api-key", API_KEY, model=MODEL)
    try:
        n, max_tokens = 8, 12
        gen_before = metric(requests.get(s.url + "/metrics").text, "engram_generation_tokens_total")
        out = tmp_path / "load.json"
        p = loadgen(s.url, "--concurrency", "1,8", "--requests", n, "--prompt-tokens", "8:24", "--max-tokens",
                    max_tokens, "--ignore-eos", "--seed", 3, "--json", out)
        assert p.returncode == 0, p.stdout + p.stderr
        res = json.loads(out.read_text())
        assert res["config"]["model"] == "engram-lexicon"  # from GET /v1/models
        assert "api_key" not in res["config"]
        levels = res["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 8]
        for lv in levels:
            assert lv["requests"] == lv["ok"] == n and lv["failed"] == 0 and lv["errors"] == [], lv
            assert lv["tokens_source"] == "usage"
            assert lv["output_tokens"] == n * max_tokens, lv
            assert 0 < lv["content_chunks"] <= lv["output_tokens"]
            assert 8 <= lv["prompt_tokens_mean"] <= 48  # words ~ tokens
            assert lv["wall_s"] > 0 and lv["output_tok_per_s"] > 0 and lv["req_per_s"] > 0
            for key in ("ttft_s", "itl_s", "e2e_s"):
                assert ordered(lv[key]), (key, lv[key])
            assert lv["ttft_s"]["p50"] > 0
            assert lv["e2e_s"]["p99"] >= lv["ttft_s"]["p50"]
        # the server counted the same tokens
        gen = metric(requests.get(s.url + "/metrics").text, "engram_generation_tokens_total")
        assert gen - (gen_before or 0) == 2 * n * max_tokens
        # the table: a header and one row per level
        rows = [l.split() for l in p.stdout.splitlines() if l.split() and l.split()[0].isdigit()]
        assert [r[:3] for r in rows] == [["1", str(n), "0"], ["8", str(n), "0"]], p.stdout

        # chat, tokens counted from chunks (no usage asked for), a duration instead of a count
        p = loadgen(s.url, "--chat", "--no-include-usage", "--concurrency", "4", "--duration", "1",
                    "--prompt-tokens", "4", "--max-tokens", "4:8", "--json", out)
        assert p.returncode == 0, p.stdout + p.stderr
        lv = json.loads(out.read_text())["levels"][0]
        assert lv["failed"] == 0 and lv["ok"] >= 4 and lv["tokens_source"] == "chunks"
        assert lv["output_tokens"] == lv["content_chunks"] <= 8 * lv["ok"]

        # failures: a wrong key (401) and a request over the context (400) both exit 1
        p = subprocess.run([sys.executable, str(LOADGEN), "--base-url", s.url + "/v1", "--api-key", "wrong",
                            "--model", "engram-lexicon", "--concurrency", "2", "--requests", "2", "--json", out],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stdout + p.stderr
        lv = json.loads(out.read_text())["levels"][0]
        assert lv["ok"] == 0 and lv["failed"] == 2 and "AuthenticationError" in lv["errors"][0]["error"]
        p = loadgen(s.url, "--concurrency", "1", "--requests", "1", "--max-tokens", "5000")
        assert p.returncode == 1 and "context_length_exceeded" in p.stderr, p.stdout + p.stderr
    finally:
        s.stop()


def test_loadgen_http_client(tmp_path):
    """--client http (no openai package needed, as on the GPU machine): the same
    counts as the SDK's on the default model, errors reported with their status."""
    s = Server("--api-key", API_KEY, model=MODEL)
    try:
        out = tmp_path / "load.json"
        p = loadgen(s.url, "--client", "http", "--concurrency", "4", "--requests", 8, "--prompt-tokens", "8:24",
                    "--max-tokens", 12, "--ignore-eos", "--json", out)
        assert p.returncode == 0, p.stdout + p.stderr
        res = json.loads(out.read_text())
        assert res["config"]["model"] == "engram-lexicon" and res["config"]["client"] == "http"
        lv = res["levels"][0]
        assert lv["ok"] == 8 and lv["output_tokens"] == 8 * 12 and lv["tokens_source"] == "usage", lv
        assert 0 < lv["content_chunks"] <= lv["output_tokens"] and ordered(lv["itl_s"]) and ordered(lv["ttft_s"])
        p = subprocess.run([sys.executable, str(LOADGEN), "--base-url", s.url + "/v1", "--api-key", "wrong",
                            "--client", "http", "--model", "m", "--concurrency", "1", "--requests", "1"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "HTTP 401" in p.stderr, p.stdout + p.stderr
    finally:
        s.stop()


def test_loadgen_token_ids_on_synthetic(tmp_path):
    """--token-ids: prompts of random ids, exact in length (the server counts
    them), on a model without a tokenizer, whose streamed chunks have no text:
    every chunk with a choice times its tokens, so ITL has samples."""
    s = Server("--synthetic", "qwen3-0.6b+layers:1", "--threads", "2", "--max-num-seqs", "4", model=None)
    try:
        out = tmp_path / "load.json"
        p = loadgen(s.url, "--client", "http", "--token-ids", 151936, "--concurrency", "4", "--requests", 6,
                    "--prompt-tokens", "10:30", "--max-tokens", "5:9", "--ignore-eos", "--json", out)
        assert p.returncode == 0, p.stdout + p.stderr
        lv = json.loads(out.read_text())["levels"][0]
        assert lv["ok"] == 6 and lv["tokens_source"] == "usage" and 10 <= lv["prompt_tokens_mean"] <= 30, lv
        assert 6 * 5 <= lv["output_tokens"] <= 6 * 9
        assert 6 < lv["content_chunks"] <= lv["output_tokens"], lv  # more than the finish chunks alone
        assert ordered(lv["itl_s"]) and ordered(lv["ttft_s"]), lv
    finally:
        s.stop()


def test_loadgen_bad_arguments():
    for bad in (["--concurrency", "0"], ["--concurrency", "a,b"], ["--max-tokens", "9:3"], ["--requests", "0"],
                ["--token-ids", "0"], ["--token-ids", "100", "--chat"]):
        p = subprocess.run([sys.executable, str(LOADGEN), *bad], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "error" in p.stderr, (bad, p.stderr)

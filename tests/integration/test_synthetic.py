"""Synthetic models end to end (engine/model/model_synthetic): engram-run generates
from qwen3-0.6b's real shape with token-id prompts, deterministically per
seed; engram-tables exports deepseek-v4.1-flash's FP8 table (its rows as the
V4.1 prime search gives them, recomputed here); bad specs and flag combinations fail with a clear message;
bench-throughput runs a tiny workload to completion with exactly the asked
token counts; engram-server serves a synthetic model to token-id prompts."""
import json

from conftest import run_bin
import requests
from serverutil import Server, check_error, post, sse_events

ENV_THREADS = ("--threads", "2")


def ids_of(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_run_qwen3_0_6b_prints_ids():
    p = run_bin("engram-run", "--synthetic", "qwen3-0.6b", "--prompt-ids", "1,2,3", "--max-tokens", "4",
                "--temperature", "0", "--print-ids", *ENV_THREADS)
    ids = ids_of(p)
    assert len(ids) == 4 and all(0 <= i < 151936 for i in ids), ids
    assert "596049920 backbone parameters" in p.stderr, p.stderr


def test_run_seeds():
    args = ("--synthetic", "llama3-1b+layers:2", "--prompt-ids", "5,6,7,8", "--max-tokens", "3", "--temperature", "0",
            "--print-ids", *ENV_THREADS)
    a = ids_of(run_bin("engram-run", *args, "--synthetic-seed", "11"))
    b = ids_of(run_bin("engram-run", *args, "--synthetic-seed", "11"))
    c = ids_of(run_bin("engram-run", *args, "--synthetic-seed", "12"))
    assert a == b and a != c, (a, b, c)
    assert all(0 <= i < 128256 for i in a + c)


def test_run_engram_table(tmp_path):
    args = ("--synthetic", "qwen3-0.6b+layers:2+engram:50k", "--synthetic-table-dir", tmp_path, "--prompt-ids",
            "1,2,3", "--max-tokens", "2", "--temperature", "0", "--print-ids", *ENV_THREADS)
    p = run_bin("engram-run", *args)
    assert "writing" in p.stderr and (tmp_path / "engram_layer_1.tbl").exists(), p.stderr
    q = run_bin("engram-run", *args, "--engram-tier", "nvme", "--engram-io", "pread")
    assert "reusing" in q.stderr, q.stderr
    assert ids_of(p) == ids_of(q)  # the same rows from either tier
    # without a table directory the table is made in host memory, the same bits
    r = run_bin("engram-run", *[a for a in args if a not in ("--synthetic-table-dir", tmp_path)])
    assert "in host memory" in r.stderr and ids_of(r) == ids_of(p), r.stderr
    info = json.loads(run_bin("engram-tables", "info", tmp_path / "engram_layer_1.tbl").stdout)
    assert info["cols"] == 64 and info["dtype"] == "bf16" and abs(info["rows"] - 50000) < 500, info


def primes_after(start, n):
    """The n primes after start, by trial division (DEEPSEEK_V4.md 5.3's search, one layer, no others seen)."""
    out, x = [], start
    while len(out) < n:
        x += 1
        if x > 1 and all(x % d for d in range(2, int(x ** 0.5) + 1)):
            out.append(x)
    return out


def test_tables_export_synthetic_v41(tmp_path):
    """engram-tables export --synthetic: deepseek-v4.1-flash's FP8 table of layer 1 as a table file,
    its rows the sum of the 24 primes the V4.1 search takes from SCALE x 16,000,000 - 1."""
    spec = "deepseek-v4.1-flash+layers:2+experts:8+engram-rows:1e-5"
    run_bin("engram-tables", "export", "--synthetic", spec, "--synthetic-seed", "2", "--out", tmp_path)
    f = tmp_path / "engram_layer_1.tbl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engram_layer_1.tbl"]  # layer 14 is past +layers:2
    info = json.loads(run_bin("engram-tables", "info", f).stdout)
    assert info["dtype"] == "fp8_ue8m0" and info["cols"] == 256 and info["row_bytes"] == 264, info
    assert info["rows"] == sum(primes_after(160 - 1, 3 * 8)), info
    assert json.loads(run_bin("engram-tables", "verify", f).stdout)["verified"] is True
    p = run_bin("engram-tables", "export", "--synthetic", "qwen3-0.6b+layers:2+engram:10k", "--out", tmp_path / "x",
                check=False)
    assert p.returncode == 1 and "--synthetic-table-dir" in p.stderr, p.stderr
    for args in (("--synthetic", spec), ("--synthetic", spec, "--model", tmp_path, "--out", tmp_path),
                 ("--synthetic", spec, "--synthetic-seed", "-1", "--out", tmp_path)):
        p = run_bin("engram-tables", "export", *args, check=False)
        assert p.returncode == 2 and "usage: engram-tables export (--model DIR | --synthetic SPEC" in p.stderr, p.stderr


def test_bad_specs_and_flags(tmp_path):
    p = run_bin("engram-run", "--synthetic", "qwen3-9b", "--prompt-ids", "1", check=False)
    assert p.returncode == 1
    assert 'synthetic spec "qwen3-9b": unknown model (known: qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, ' \
           'llama3-1b, llama3-8b, qwen3-30b-a3b, deepseek-v4-flash, deepseek-v4.1-flash)' in p.stderr, p.stderr
    p = run_bin("engram-run", "--synthetic", "qwen3-0.6b+layers:99", "--prompt-ids", "1", check=False)
    assert p.returncode == 1 and "+layers:N needs N from 1 to 28" in p.stderr, p.stderr
    for args, needle in [
        (("--synthetic", "qwen3-0.6b", "--prompt", "hi"), "no tokenizer"),
        (("--synthetic", "qwen3-0.6b", "--model", tmp_path, "--prompt-ids", "1"), "one of --model, --synthetic"),
        (("--synthetic", "qwen3-0.6b", "--engram-tables", tmp_path, "--prompt-ids", "1"), "--synthetic-table-dir"),
        (("--model", tmp_path, "--synthetic-seed", "3", "--prompt-ids", "1"), "need --synthetic"),
        (("--synthetic", "qwen3-0.6b", "--synthetic-seed", "x", "--prompt-ids", "1"), "bad value"),
    ]:
        p = run_bin("engram-run", *args, check=False)
        assert p.returncode == 2 and needle in p.stderr, (args, p.stderr)
    p = run_bin("bench-throughput", "--synthetic", "qwen3-9b", "-n", "1", check=False)
    assert p.returncode == 1 and "unknown model" in p.stderr, p.stderr
    p = run_bin("bench-throughput", "--synthetic", "qwen3-0.6b", "--len", "9:3", check=False)
    assert p.returncode == 2 and "bad value for --len" in p.stderr, p.stderr
    p = run_bin("bench-throughput", "-n", "1", check=False)
    assert p.returncode == 2 and "exactly one of --synthetic SPEC, --model DIR" in p.stderr, p.stderr


def test_bench_throughput_tiny():
    p = run_bin("bench-throughput", "--synthetic", "qwen3-0.6b", "-n", "3", "--len", "3:3", "--max-num-seqs", "2",
                "--kv-cache-tokens", "64", *ENV_THREADS)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["n"] == 3 and r["failed"] == 0
    assert r["prompt_tokens"] == 9 and r["output_tokens"] == 9, r
    assert r["wall_s"] > 0 and abs(r["output_tok_s"] - 9 / r["wall_s"]) < 1e-2 * r["output_tok_s"]
    assert abs(r["total_tok_s"] - 18 / r["wall_s"]) < 1e-2 * r["total_tok_s"]
    assert 0 < r["ttft_p50_s"] <= r["ttft_p99_s"] <= r["wall_s"]
    # every model token in a step: 9 prompt tokens, then 2 decode steps of each sequence
    assert r["steps"] >= 3 and r["mean_step_tokens"] * r["steps"] == 9 + 3 * 2, r


def test_server_token_prompts():
    s = Server("--synthetic", "qwen3-0.6b+layers:2", "--synthetic-seed", "4", model=None)
    try:
        r = post(s.url, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0,
                                            "ignore_eos": True}, key=None)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "qwen3-0.6b+layers:2"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                                 "prompt_tokens_details": {"cached_tokens": 0}}, body
        # streamed, the tokens have no text: a chunk of empty text still comes for each read with new
        # tokens (each token, unless the reader lags), the last token with the finish
        r = post(s.url, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0,
                                            "ignore_eos": True, "stream": True}, key=None, stream=True)
        assert r.status_code == 200, r.text
        events = sse_events(r)
        assert events[-1] == "[DONE]"
        choices = [c for e in events[:-1] for c in json.loads(e)["choices"]]
        assert all(c["text"] == "" for c in choices), choices
        assert [c["finish_reason"] for c in choices][-1] == "length"
        assert 1 <= sum(c["finish_reason"] is None for c in choices) <= 5, choices
        check_error(post(s.url, "/v1/completions", {"prompt": "text", "max_tokens": 2}, key=None), 400, "prompt")
        check_error(post(s.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, key=None),
                    400, "messages")
    finally:
        out = s.stop()
    assert "serving synthetic qwen3-0.6b+layers:2" in out, out


def test_server_table_over_dram_budget(tmp_path):
    """A synthetic Engram table 12x the DRAM budget: served from NVMe behind the row caches, the same
    tokens as with the table mapped whole, and the metrics show where the rows came from."""
    spec = "qwen3-0.6b+layers:2+engram:100k"  # 12.8 MB of bf16 rows
    body = {"prompt": [5, 6, 7, 8, 9, 10], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "engram_gates": True}  # the token ids and gates (no tokenizer: the text is empty)
    got = []
    for extra in (["--engram-tier", "dram"], ["--engram-dram-budget", "1M", "--engram-hbm-cache", "256K"]):
        # --warmup 0: the warm-up's own Engram rows would count in the store's counters and hot rows
        s = Server("--synthetic", spec, "--synthetic-table-dir", str(tmp_path), *extra, "--warmup", "0", model=None)
        try:
            r = post(s.url, "/v1/completions", body, key=None)
            assert r.status_code == 200, r.text
            g = r.json()["engram_gates"]
            got.append((g["token_ids"], g["gates"]))
            m = {l.split()[0]: float(l.split()[1]) for l in requests.get(s.url + "/metrics", timeout=10).text.splitlines()
                 if l.startswith("engram_") and not l.startswith("#")}
        finally:
            out = s.stop()
        assert m["engram_fetch_lookups_total"] == 11 * 16, m  # 6 prompt + 5 fed-back output tokens, 16 heads
        if "--engram-dram-budget" in extra:
            assert "NVMe tier" in out and m['engram_store_hits_total{tier="nvme"}'] > 0, out
            assert m["engram_hbm_cache_capacity_rows"] == 2048 and m["engram_fetch_copied_rows_total"] > 0, m
    assert len(got[0][0]) == 11 and got[0] == got[1], got  # the tokens that went through the model

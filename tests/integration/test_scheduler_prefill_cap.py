"""--max-prefill-tokens-decoding through the server (the engine's own checks
are tests/unit/test_engine.c): with the cap, concurrent greedy requests give
each one's output alone, and engram_scheduler_decode_step_prompt_tokens
shows every step that ran decode tokens carrying at most the cap of prompt
tokens, some of them more than none. The flag also comes from the
environment, as every flag does."""
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import run_bin
from serverutil import Server, metric, post
from test_scheduler import complete, prompt, wait_idle

HIST = "engram_scheduler_decode_step_prompt_tokens"


def test_prefill_cap_outputs_and_metric():
    s = Server("--prefill-chunk", "16", "--max-num-batched-tokens", "48", "--max-num-seqs", "16",
               "--max-queued-requests", "64", "--enable-prefix-caching", "0",
               env={"ENGRAM_MAX_PREFILL_TOKENS_DECODING": "8"})
    try:
        prompts = [prompt(i) for i in range(16)]
        alone = [complete(s.url, p) for p in prompts]
        before = requests.get(s.url + "/metrics").text
        with ThreadPoolExecutor(16) as ex:
            together = list(ex.map(lambda p: complete(s.url, p), prompts))
        assert together == alone
        text = wait_idle(s.url)
        count = metric(text, HIST + "_count") - metric(before, HIST + "_count")
        assert count > 0, text
        assert metric(text, HIST + "_bucket", {"le": "8"}) == metric(text, HIST + "_count")
        assert metric(text, HIST + "_bucket", {"le": "+Inf"}) == metric(text, HIST + "_count")
        # prompts went on beside the decodes (not only in steps of their own)
        assert metric(text, HIST + "_sum") - metric(before, HIST + "_sum") > 0
        assert metric(text, HIST + "_bucket", {"le": "0"}) < metric(text, HIST + "_count")
    finally:
        s.stop()


def test_prefill_cap_bad_value():
    p = run_bin("engram-server", "--model", "/nonexistent", "--max-prefill-tokens-decoding", "-1", check=False)
    assert p.returncode == 2 and "--max-prefill-tokens-decoding" in p.stderr, p.stderr

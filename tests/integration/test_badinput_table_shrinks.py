"""A table file cut short under a running server (issue 23): the DRAM tier
maps it shared, so its rows vanish from under the mapping and a gather would
die of SIGBUS. The store's SIGBUS guard turns that into a failed request (a
500 naming the failure), marks the table bad for good, /health says so (503)
and /metrics counts it, while the server keeps answering everything else and
stops cleanly. The NVMe tier answers 500 on the same cut (its reads fail)."""
import os

import pytest
import requests

from conftest import MODELS, run_bin
from serverutil import Server, metric

MODEL = MODELS / "qwen3_engram"


@pytest.mark.parametrize("tier", ["dram", "nvme"])
def test_table_truncated_under_server(tmp_path, tier):
    tables = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", MODEL, "--out", tables)
    files = sorted(tables.glob("engram_layer_*.tbl"))
    assert files
    s = Server("--engram-table-dir", tables, "--engram-tier", tier, "--max-num-seqs", "4")
    try:
        body = {"prompt": [5, 6, 7, 8], "max_tokens": 4, "temperature": 0}
        r = requests.post(s.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        for f in files:  # header only: every row is gone
            os.truncate(f, 4096)
        for _ in range(3):
            r = requests.post(s.url + "/v1/completions", json=dict(body, prompt=[9, 10, 11]), timeout=60)
            assert r.status_code == 500, r.text
            assert "Generation failed" in r.json()["error"]["message"], r.text
        # everything that needs no table still answers
        assert requests.get(s.url + "/v1/models", timeout=10).status_code == 200
        assert requests.post(s.url + "/tokenize", json={"prompt": "hello"}, timeout=10).status_code == 200
        m = requests.get(s.url + "/metrics", timeout=10).text
        h = requests.get(s.url + "/health", timeout=10)
        if tier == "dram":
            assert metric(m, "engram_store_tables_bad") >= 1, m
            assert h.status_code == 503 and "shrank" in h.json()["error"]["message"], h.text
        else:  # the NVMe tier reads (and fails) row by row: the table is not marked
            assert metric(m, "engram_store_tables_bad") == 0
            assert h.status_code == 200
    finally:
        out = s.stop()
    if tier == "dram":
        assert "shrank under its mapping" in out, out[-3000:]

"""Engram tables served from aligned table files (engram/store): exported
from the checkpoint, read from DRAM (mmap), from NVMe through io_uring with
O_DIRECT, through pread, and buffered, and from NVMe behind a DRAM budget
small enough to evict all the time. Greedy generation must be bitwise the
same wherever the table lives: logits of the prompt, every gate, every id.
Also: the first start writes missing table files, later starts reuse them,
a file that does not match the checkpoint is refused; the store's counters
(engram-run's summary, the server's /metrics) move."""
import json
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, MODELS, SOURCE, run_bin

FIXTURES = [MODELS / "qwen3_engram", SOURCE / "models" / "engram-lexicon"]
PROMPT = "5,6,7,8,9,10,11,12,13,14,15,16,17"

TIERS = {
    "dram": ["--engram-tier", "dram"],
    "dram-hugepages": ["--engram-tier", "dram", "--engram-hugepages"],
    "nvme-uring": ["--engram-tier", "nvme", "--engram-io", "uring", "--engram-queue-depth", "8"],
    "nvme-uring-qd1": ["--engram-tier", "nvme", "--engram-io", "uring", "--engram-queue-depth", "1"],
    "nvme-pread": ["--engram-tier", "nvme", "--engram-io", "pread"],
    "nvme-buffered": ["--engram-tier", "nvme", "--engram-buffered"],
    # a DRAM budget far below the tables: NVMe behind a row cache of a few dozen rows
    "auto-budget-2K": ["--engram-dram-budget", "2K"],
    "nvme-budget-1K-pread": ["--engram-tier", "nvme", "--engram-dram-budget", "1K", "--engram-io", "pread"],
    "nvme-budget-64K-qd1": ["--engram-tier", "nvme", "--engram-dram-budget", "64K", "--engram-queue-depth", "1"],
    "auto-default": [],
    # the backend's hot-row cache (engram_fetch; host memory on the CPU backend): a few rows, evicting all the time
    "dram-hbm-1K": ["--engram-tier", "dram", "--engram-hbm-cache", "1K"],
    "nvme-budget-2K-hbm-16K": ["--engram-tier", "nvme", "--engram-dram-budget", "2K", "--engram-hbm-cache", "16K"],
    # the two caches as tiers: exclusive (the default above) and inclusive
    "nvme-budget-2K-hbm-16K-inclusive": ["--engram-tier", "nvme", "--engram-dram-budget", "2K", "--engram-hbm-cache",
                                         "16K", "--engram-tiers", "inclusive"],
    "nvme-budget-64K-hbm-4K-exclusive": ["--engram-tier", "nvme", "--engram-dram-budget", "64K", "--engram-hbm-cache",
                                         "4K", "--engram-tiers", "exclusive"],
}


def generate(model, tmp_path, tag, extra, chunk):
    logits = tmp_path / f"logits-{tag}.bin"
    p = run_bin("engram-run", "--model", model, "--prompt-ids", PROMPT, "--max-tokens", "12",
                "--temperature", "0", "--ignore-eos", "--prefill-chunk", chunk, "--print-ids",
                "--print-gates", "--dump-logits", logits, *extra)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    gates = ids = None
    for l in lines:
        if l.startswith("{") and "gates" in l:
            gates = l
        elif l.startswith("["):
            ids = json.loads(l)
    assert gates is not None and ids is not None, p.stdout
    return logits.read_bytes(), gates, ids


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    run_bin("engram-tables", "export", "--model", request.param, "--out", out)
    return request.param, out


def test_export_info(exported):
    model, out = exported
    files = sorted(out.glob("engram_layer_*.tbl"))
    cfg = json.loads((model / "config.json").read_text())
    assert [f.name for f in files] == sorted(f"engram_layer_{i}.tbl" for i in cfg["engram"]["layer_ids"])
    for f in files:
        info = json.loads(run_bin("engram-tables", "info", f).stdout)
        assert info["data_offset"] % 4096 == 0
        stride = info["row_stride"]
        assert stride >= info["row_bytes"] and stride % 8 == 0 and stride - info["row_bytes"] < 8  # dense
        assert f.stat().st_size % 4096 == 0
        assert f.stat().st_size >= info["data_offset"] + info["rows"] * stride


@pytest.mark.parametrize("chunk", ["256", "1"])
@pytest.mark.parametrize("tier", sorted(TIERS))
def test_bitwise_identical(exported, tmp_path, tier, chunk):
    model, out = exported
    ref = generate(model, tmp_path, "ckpt", [], chunk)
    flag = "--engram-table-dir" if tier.startswith("auto") else "--engram-tables"  # the alias, too
    got = generate(model, tmp_path, tier, [flag, out, *TIERS[tier]], chunk)
    assert got[0] == ref[0], "logits differ"
    assert got[1] == ref[1], "gates differ"
    assert got[2] == ref[2], "generated ids differ"


def test_odirect_and_uring_used(exported):
    """No fallback note on a filesystem that takes O_DIRECT and io_uring (else the note names it)."""
    model, out = exported
    p = run_bin("engram-run", "--model", model, "--prompt-ids", PROMPT, "--max-tokens", "1",
                "--engram-tables", out, "--engram-tier", "nvme")
    notes = [l for l in p.stderr.splitlines() if l.startswith("engram_store:")]
    for n in notes:
        assert "O_DIRECT" in n or "io_uring" in n, n


def store_summary(stderr):
    m = re.search(r"Engram store: (\d+) lookups, (\d+) DRAM hits, (\d+) NVMe rows, (\d+) NVMe reads "
                  r"\([\d.]+ KiB\), (\d+) rows handed ahead, (\d+) rows prefetched", stderr)
    assert m, stderr
    return dict(zip(("lookups", "dram", "nvme", "reads", "ahead", "prefetched"), map(int, m.groups())))


def test_first_start_writes_then_reuses(tmp_path):
    """--engram-table-dir: missing files are written (the same bytes as
    engram-tables export), then reused as they are (mtime unchanged)."""
    model = FIXTURES[0]
    d = tmp_path / "tables"  # created by the first start
    args = ["--model", model, "--prompt-ids", PROMPT, "--max-tokens", "4", "--temperature", "0", "--print-ids",
            "--engram-table-dir", d]
    p = run_bin("engram-run", *args)
    files = sorted(d.glob("engram_layer_*.tbl"))
    assert [f.name for f in files] == ["engram_layer_1.tbl", "engram_layer_2.tbl"], p.stderr
    assert "writing" in p.stderr and "100%" in p.stderr and "\r" not in p.stderr  # not a TTY: log lines
    assert not list(d.glob("*.tmp"))
    ref = tmp_path / "exported"
    run_bin("engram-tables", "export", "--model", model, "--out", ref)
    for f in files:
        assert f.read_bytes() == (ref / f.name).read_bytes()
    mtimes = [f.stat().st_mtime_ns for f in files]
    q = run_bin("engram-run", *args)
    assert "writing" not in q.stderr
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert q.stdout.splitlines()[-1] == p.stdout.splitlines()[-1]
    assert "whole tables in DRAM" in q.stderr  # the default budget: they fit in MemAvailable
    # one file missing: only it is written again
    files[1].unlink()
    r = run_bin("engram-run", *args)
    assert "engram_layer_2.tbl" in r.stderr and "engram_layer_1.tbl: 0%" not in r.stderr
    assert files[0].stat().st_mtime_ns == mtimes[0]


@pytest.mark.parametrize("case", ["other-layer", "dtype", "garbage"])
def test_mismatched_table_file(tmp_path, case):
    """A table file that does not match the checkpoint: one clear line naming
    the file and telling to delete it; nothing is overwritten."""
    model = FIXTURES[0]
    d = tmp_path / "t"
    run_bin("engram-tables", "export", "--model", model, "--out", d)
    f = d / "engram_layer_1.tbl"
    if case == "other-layer":
        shutil.copy(d / "engram_layer_2.tbl", f)
        needle = "needs [10170, 8]"
    elif case == "dtype":  # the same shape in bf16 rows
        b = bytearray(f.read_bytes())
        b[12:16] = (2).to_bytes(4, "little")
        b[28:32] = (16).to_bytes(4, "little")
        b[32:36] = (16).to_bytes(4, "little")
        f.write_bytes(bytes(b))
        needle = "bf16 but layer 1 needs [10170, 8] f32"
    else:
        f.write_bytes(b"\0" * 8192)
        needle = "wrong magic"
    before = f.read_bytes()
    for tier in ("auto", "dram", "nvme"):
        p = run_bin("engram-run", "--model", model, "--prompt-ids", "5,6", "--max-tokens", "1", "--engram-table-dir", d,
                    "--engram-tier", tier, check=False)
        assert p.returncode == 1, p.stderr
        lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("engram_store:")]
        assert len(lines) == 1 and str(f) in lines[0] and needle in lines[0] and "delete" in lines[0], p.stderr
    assert f.read_bytes() == before


def test_store_counters(tmp_path):
    """A tiny DRAM budget: rows come from NVMe, repeats from the cache."""
    model = FIXTURES[1]
    d = tmp_path / "t"
    prompt = ",".join(["5,6,7,8"] * 8)  # the same N-grams again and again
    p = run_bin("engram-run", "--model", model, "--prompt-ids", prompt, "--max-tokens", "4", "--temperature", "0",
                "--engram-table-dir", d, "--engram-dram-budget", "256K", "--prefill-chunk", "8")
    s = store_summary(p.stderr)
    assert "NVMe tier" in p.stderr and "row cache" in p.stderr
    assert s["lookups"] == s["dram"] + s["nvme"] and s["dram"] > 0 and s["reads"] > 0
    # each prompt chunk after the first is handed to the prefetch threads while the one before runs:
    # 24 of the 32 prompt tokens, rows per token = lookups / tokens fed (32 + 3)
    assert s["lookups"] % 35 == 0 and s["ahead"] == 24 * s["lookups"] // 35
    assert s["reads"] <= s["nvme"] + s["prefetched"] and s["prefetched"] <= s["ahead"]
    p = run_bin("engram-run", "--model", model, "--prompt-ids", prompt, "--max-tokens", "4", "--temperature", "0",
                "--engram-table-dir", d)
    s = store_summary(p.stderr)
    assert s["dram"] == s["lookups"] > 0 and s["reads"] == 0 and s["ahead"] == s["prefetched"] == 0  # mapped: no-op


def tiers_summary(stderr):
    m = re.search(r"Engram tiers: (\w+), (\d+) HBM hits, (\d+) rows moved up, (\d+) copied back, (\d+) demoted to "
                  r"DRAM, (\d+) rows in both caches", stderr)
    assert m, stderr
    return dict(zip(("hits", "up", "back", "down", "both"), map(int, m.groups()[1:])), policy=m.group(1))


@pytest.mark.parametrize("policy", ["exclusive", "inclusive"])
def test_tiers(tmp_path, policy):
    """The DRAM row cache over NVMe and the hot-row cache (host memory on the
    CPU backend) as tiers, both smaller than the rows the run touches: with
    exclusive ones (the default) rows move up out of DRAM, the ones the
    hot-row cache evicts are copied back and demoted to DRAM, and no row is
    in both caches after the run; inclusive ones overlap and move nothing.
    The ids are the checkpoint's either way (test_bitwise_identical has the
    logits and gates)."""
    model = SOURCE / "models" / "engram-lexicon"
    d = tmp_path / "t"
    args = ["--model", model, "--prompt", "The capital of France is Paris, and the capital of Italy is Rome; the "
            "capital of Spain is", "--max-tokens", "24", "--temperature", "0", "--ignore-eos", "--print-ids"]
    ref = run_bin("engram-run", *args).stdout.splitlines()[-1]
    flags = ["--engram-table-dir", d, "--engram-tier", "nvme", "--engram-dram-budget", "64K", "--engram-hbm-cache", "16K"]
    p = run_bin("engram-run", *args, *flags, *([] if policy == "exclusive" else ["--engram-tiers", policy]))
    assert p.stdout.splitlines()[-1] == ref
    t = tiers_summary(p.stderr)
    assert t["policy"] == policy
    if policy == "exclusive":
        assert t["both"] == 0 and t["up"] > 0 and t["back"] > 0 and 0 < t["down"] <= t["back"], t
    else:
        assert t["both"] > 0 and t["up"] == t["back"] == t["down"] == 0, t
    bad = run_bin("engram-run", *args, *flags, "--engram-tiers", "both", check=False)
    assert bad.returncode == 2 and "--engram-tiers" in bad.stderr, bad.stderr


def test_store_flag_needs_tables():
    for flag in (["--engram-tier", "nvme"], ["--engram-dram-budget", "1M"]):
        p = run_bin("engram-run", "--model", FIXTURES[0], "--prompt-ids", "5,6", *flag, check=False)
        assert p.returncode == 2 and "--engram-table-dir" in p.stderr, p.stderr


def test_server_store_metrics(tmp_path):
    """engram-server under a DRAM budget: the engram_store_* families and
    engram_store_gather_stall_seconds pass promtool, and the counters move."""
    import requests
    from serverutil import Server, metric

    model = FIXTURES[1]
    # --warmup 0: the warm-up's own Engram rows would count in the store's counters and hot rows
    s = Server("--engram-table-dir", tmp_path / "t", "--engram-dram-budget", "1M", "--warmup", "0", model=model)
    try:
        body = dict(model="engram-lexicon", prompt="The capital of France is", max_tokens=6, temperature=0)
        text = requests.get(s.url + "/metrics").text
        assert metric(text, "engram_store_lookups_total") == 0
        assert metric(text, "engram_store_cache_capacity_rows") > 0
        assert requests.post(s.url + "/v1/completions", json=body, timeout=120).status_code == 200
        t1 = requests.get(s.url + "/metrics").text
        look = metric(t1, "engram_store_lookups_total")
        dram = metric(t1, "engram_store_hits_total", {"tier": "dram"})
        nvme = metric(t1, "engram_store_hits_total", {"tier": "nvme"})
        assert look > 0 and look == dram + nvme and nvme > 0
        reads = metric(t1, "engram_store_nvme_reads_total")
        assert reads > 0 and metric(t1, "engram_store_nvme_read_bytes_total") >= 4096 * reads
        assert metric(t1, "engram_store_nvme_read_latency_seconds_count") == reads
        assert metric(t1, "engram_store_gather_stall_seconds_count") > 0
        # the backend side: every Engram layer of every step counted; the compute's wait for rows
        # (on the CPU, for the host gather) is within the request's own time
        assert metric(t1, "engram_prefetch_stall_seconds_count") > 0
        assert 0 <= metric(t1, "engram_prefetch_stall_seconds_sum") < metric(t1, "engram_e2e_request_latency_seconds_sum")
        assert metric(t1, "engram_fetch_lookups_total") == look
        assert metric(t1, "engram_store_cache_rows") > 0
        assert requests.post(s.url + "/v1/completions", json=body, timeout=120).status_code == 200
        t2 = requests.get(s.url + "/metrics").text  # the same prompt again: its rows are cached now
        assert metric(t2, "engram_store_hits_total", {"tier": "dram"}) - dram >= nvme
        for name in ("engram_store_prefetch_rows_total", "engram_store_prefetch_reads_total",
                     "engram_store_prefetch_dropped_total", "engram_store_cache_evictions_total",
                     "engram_store_cache_bytes", "engram_store_gather_stall_seconds_sum"):
            assert metric(t2, name) is not None, name
        p = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=t2,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        s.stop()


@pytest.mark.parametrize("tier", [["--engram-tier", "dram"], ["--engram-tier", "nvme", "--engram-io", "uring"],
                                  # tables far larger than the DRAM budget: NVMe behind a few rows of cache,
                                  # and the backend's hot-row cache in front
                                  ["--engram-dram-budget", "2K", "--engram-hbm-cache", "8K"]],
                         ids=["dram", "nvme", "budget-2K-hbm-8K"])
def test_server_same_completion_and_gates(tmp_path, tier):
    """engram-server --engram-tables: the same text and gates as from the checkpoint."""
    import requests
    from serverutil import Server

    model = FIXTURES[1]
    out = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", model, "--out", out)
    body = dict(model="engram-lexicon", prompt="The capital of France is", max_tokens=8, temperature=0,
                engram_gates=True)
    got = []
    for extra in ([], ["--engram-tables", out, *tier]):
        s = Server(*extra, model=model)
        try:
            r = requests.post(s.url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            j = r.json()
            got.append((j["choices"][0]["text"], j["engram_gates"]))
        finally:
            s.stop()
    assert got[0] == got[1]


def test_server_lookahead_reads_the_prompt_ahead(tmp_path):
    """--engram-lookahead: with prompt chunks of 16, the first step hands the
    rows of the rest of the prompt to the NVMe stores' prefetch threads
    (exactly those rows; none with it off), and the completion and gates are
    the same as with it off (0)."""
    import requests
    from serverutil import Server, metric

    model = FIXTURES[1]
    out = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", model, "--out", out)
    prompt = "The capital of France is Paris, and the capital of Italy is Rome; " * 4
    body = dict(model="engram-lexicon", prompt=prompt, max_tokens=8, temperature=0, ignore_eos=True,
                engram_gates=True)
    got = []
    for ahead in ("0", "2048"):
        # --warmup 0: the warm-up's own Engram rows would count in the store's counters and hot rows
        s = Server("--engram-tables", out, "--engram-tier", "nvme", "--engram-dram-budget", "1M",
                   "--prefill-chunk", "16", "--engram-lookahead", ahead, "--warmup", "0", model=model)
        try:
            r = requests.post(s.url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            j = r.json()
            text = requests.get(s.url + "/metrics").text
            n_prompt, n_out = j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]
            assert n_prompt > 48 and n_out == 8
            run = n_prompt + n_out - 1  # every token fed: the last sampled one never is
            lookups = metric(text, "engram_fetch_lookups_total")
            assert lookups > 0 and lookups % run == 0
            per_token = lookups // run  # rows per token over the Engram layers
            extra = metric(text, "engram_store_prefetch_rows_total")
            assert extra == (0 if ahead == "0" else (n_prompt - 16) * per_token), (ahead, extra, per_token)
            got.append((j["choices"][0]["text"], j["engram_gates"]))
        finally:
            s.stop()
    assert got[0] == got[1]


@pytest.mark.parametrize("hbm", [[], ["--engram-hbm-cache", "16K"]], ids=["dram", "dram-hbm"])
def test_server_warm_restart(tmp_path, hbm):
    """Warm restarts: a server over NVMe tables behind a DRAM budget writes a
    hot-row file beside each table when it stops (SIGTERM); a new server on
    the same tables with --engram-warm-start wait reads the rows back before
    it is ready, and the same request is then served without one NVMe read
    (every store lookup a DRAM hit; with a hot-row cache, more of its rows
    found there than the first server found). A damaged hot-row file is
    ignored (counted, logged) and the server starts cold. The completion and
    gates equal those from the checkpoint's own tensors every time."""
    import requests
    from serverutil import Server, metric

    model = FIXTURES[1]
    out = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", model, "--out", out)
    body = dict(model="engram-lexicon", prompt="The capital of France is", max_tokens=8, temperature=0,
                engram_gates=True)

    def ask(s):
        r = requests.post(s.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        j = r.json()
        return (j["choices"][0]["text"], j["engram_gates"]), requests.get(s.url + "/metrics").text

    s = Server(model=model)
    try:
        want, _ = ask(s)
        assert "engram_cache" not in requests.get(s.url + "/health").json()  # no store, no warm start
    finally:
        s.stop()
    # --warmup 0: the warm-up's own Engram rows would count in the store's counters and hot rows
    args = ["--engram-tables", out, "--engram-tier", "nvme", "--engram-dram-budget", "1M", "--engram-lookahead", "0",
            "--warmup", "0", *hbm]
    s = Server(*args, "--engram-warm-start", "wait", model=model)
    try:
        assert requests.get(s.url + "/health").json() == {"status": "ok", "engram_cache": "ready"}
        got, m1 = ask(s)
        assert got == want
        assert metric(m1, "engram_store_hits_total", {"tier": "nvme"}) > 0  # cold: the rows came from the files
        assert metric(m1, "engram_store_warm_target_rows") == 0
    finally:
        s.stop()
    hot = sorted(out.glob("*.tbl.hot"))
    assert len(hot) == 2 and all(f.stat().st_size > 72 for f in hot)  # both Engram layers
    s = Server(*args, "--engram-warm-start", "wait", model=model)
    try:
        m = requests.get(s.url + "/metrics").text
        assert metric(m, "engram_store_warm_rows_total") == metric(m, "engram_store_warm_target_rows") > 0
        assert metric(m, "engram_store_warming") == 0 and metric(m, "engram_store_warm_ignored_total") == 0
        reads = metric(m, "engram_store_nvme_reads_total")
        got, m2 = ask(s)
        assert got == want
        assert metric(m2, "engram_store_hits_total", {"tier": "nvme"}) == 0
        assert metric(m2, "engram_store_nvme_reads_total") == reads  # warm: not one read by the request
        if hbm:
            assert metric(m2, "engram_hbm_hits_total") > metric(m1, "engram_hbm_hits_total")
            assert metric(m2, "engram_fetch_copied_rows_total") < metric(m1, "engram_fetch_copied_rows_total")
    finally:
        s.stop()
    for f in hot:  # damaged: one byte of the first entry
        b = bytearray(f.read_bytes())
        b[64] ^= 0x40
        f.write_bytes(bytes(b))
    s = Server(*args, "--engram-warm-start", "background", model=model)
    try:
        m = requests.get(s.url + "/metrics").text
        assert metric(m, "engram_store_warm_ignored_total") == 2 and metric(m, "engram_store_warm_rows_total") == 0
        assert requests.get(s.url + "/health").json()["engram_cache"] == "ready"
        got, m3 = ask(s)
        assert got == want
        assert metric(m3, "engram_store_hits_total", {"tier": "nvme"}) > 0
    finally:
        log = s.stop()
    assert "ignored: checksum mismatch" in log

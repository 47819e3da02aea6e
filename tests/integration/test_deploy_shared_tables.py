"""Several replicas on one node share one host copy of the Engram tables: the
engine reads them in place from the mmap'd model.safetensors (MAP_SHARED,
read-only), so a second engram-server process on the same file adds no
private resident copy. Measured from /proc/<pid>/smaps after both processes
served the same request: the mapping is shared ('s' in its permissions), has
no Private_Dirty pages (no copy-on-write copy), the second process's resident
pages of it are shared with the first, and neither process holds an
anonymous copy the size of the tables."""
import json
import os
import struct

import requests

from conftest import BUILD, SOURCE
from deployutil import procs, wait_http  # noqa: F401
from serverutil import free_port

MODEL = SOURCE / "models" / "engram-lexicon"
PROMPT = "Only Alexander the Great could tame the horse Bucephalus."


def engram_table_bytes(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and ".engram.multi_head_embedding." in k)


def mapping_stats(pid, path):
    """Sums the smaps fields (kB) of every mapping of path; returns (fields, perms)."""
    fields, perms, cur = {}, set(), None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                cur = parts[5] if len(parts) > 5 else None
                if cur == str(path):
                    perms.add(parts[1])
            elif cur == str(path) and len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = fields.get(parts[0].rstrip(":"), 0) + int(parts[1])
    return fields, perms


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_second_replica_adds_no_private_copy(procs):
    model_file = (MODEL / "model.safetensors").resolve()
    tables_kb = engram_table_bytes(model_file) // 1024
    assert tables_kb > 8 * 1024  # the default model has ~12 MB of Engram tables
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    servers = []
    for name in ("replica-a", "replica-b"):
        port = free_port()
        p = procs.start(name, [str(BUILD / "engram-server"), "--model", str(MODEL), "--port", str(port),
                               "--threads", "1"], env=env)
        wait_http(f"http://127.0.0.1:{port}/health", p, procs)
        servers.append((p, port))
    for p, port in servers:
        r = requests.post(f"http://127.0.0.1:{port}/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
    (a, _), (b, _) = servers
    sa, perms_a = mapping_stats(a.pid, model_file)
    sb, perms_b = mapping_stats(b.pid, model_file)
    assert sa and sb, "model.safetensors is not mapped"
    # a shared, read-only file mapping (r--s), never a private one
    assert perms_a and all(pp[0] == "r" and pp[1] == "-" and pp[3] == "s" for pp in perms_a | perms_b), (perms_a, perms_b)
    for s in (sa, sb):
        assert s["Private_Dirty"] == 0 and s["Shared_Dirty"] == 0, s
        assert s["Rss"] >= tables_kb, s  # the tables are resident, read in place
    # what B has resident of the file is the page cache that A maps too
    assert sb["Shared_Clean"] >= 0.9 * sb["Rss"], sb
    assert sb["Private_Clean"] + sb["Private_Dirty"] <= 0.1 * sb["Rss"], sb
    # and each process holds less anonymous memory than one copy of the tables
    ra, rb = rss_anon_kb(a.pid), rss_anon_kb(b.pid)
    assert ra < tables_kb and rb < tables_kb, (ra, rb, tables_kb)
    assert abs(rb - ra) < 2048, (ra, rb)

"""The deployment of deploy/compose.yaml with real components on loopback (no
container engine): nginx (Debian) load-balances two engram-server processes
(CPU, the default model, started from config/engram-server.json) with
deploy/nginx/nginx.conf; a Prometheus server (Debian) scrapes both with
deploy/prometheus/prometheus.yml and its query API returns engram_ series.
One replica gets SIGTERM while 16 streaming requests are in flight: it drains
(new requests 503, nginx retries them on the other replica; accepted ones
finish), exits 0, and no client sees an error."""
import json
import os
import signal
import threading
import time

import requests

from conftest import BUILD, SOURCE
from deployutil import need, procs, render_nginx, render_prometheus, wait_http  # noqa: F401
from serverutil import free_port

MODEL = SOURCE / "models" / "engram-lexicon"
CONFIG = SOURCE / "config" / "engram-server.json"
N_STREAMS = 16
MAX_TOKENS = 96


def start_replica(procs, name):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    p = procs.start(name, [str(BUILD / "engram-server"), "--config", str(CONFIG), "--model", str(MODEL),
                           "--port", str(port), "--threads", "1", "--shutdown-timeout", "30"], env=env)
    wait_http(f"http://127.0.0.1:{port}/health", p, procs)
    return p, port


def stream(url, i, results, first):
    body = {"model": "engram-lexicon", "prompt": f"Request {i}: the horse", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        r = requests.post(url + "/v1/completions", json=body, stream=True, timeout=60)
        if r.status_code != 200:
            results[i] = f"HTTP {r.status_code}: {r.text[:300]}"
            return
        events = []
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith(b"data: "), line
            first[i].set()
            events.append(line[6:])
        assert events[-1] == b"[DONE]", events[-3:]
        for e in events[:-1]:
            obj = json.loads(e)
            assert "error" not in obj, obj
        finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
        assert finish == ["length"], finish
        usage = json.loads(events[-2])["usage"]
        results[i] = usage["completion_tokens"]
    except Exception as ex:  # reported by the main thread
        results[i] = f"{type(ex).__name__}: {ex}"
    finally:
        first[i].set()


def metric_sum(url, names):
    text = requests.get(url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        key, _, val = line.rpartition(" ")
        if key in names:
            total += float(val)
    return total


def test_nginx_prometheus_and_drain(procs, tmp_path):
    nginx, prometheus = need("nginx"), need("prometheus")
    (a, pa), (b, pb) = start_replica(procs, "replica-a"), start_replica(procs, "replica-b")

    lb_port = free_port()
    conf = render_nginx(tmp_path, lb_port, (pa, pb))
    ng = procs.start("nginx", [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])
    lb = f"http://127.0.0.1:{lb_port}"
    wait_http(lb + "/nginx-health", ng, procs)

    prom_port = free_port()
    pconf = render_prometheus(tmp_path, (pa, pb))
    prom = procs.start("prometheus", [prometheus, f"--config.file={pconf}", f"--storage.tsdb.path={tmp_path}/tsdb",
                                      f"--web.listen-address=127.0.0.1:{prom_port}"])
    purl = f"http://127.0.0.1:{prom_port}"

    # nginx spreads requests over both replicas
    for _ in range(4):
        r = requests.post(lb + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
    done = ("engram_request_success_total{finished_reason=\"length\"}",
            "engram_request_success_total{finished_reason=\"stop\"}")
    assert metric_sum(f"http://127.0.0.1:{pa}", done) >= 1
    assert metric_sum(f"http://127.0.0.1:{pb}", done) >= 1

    # Prometheus scraped both replicas: the query API returns their engram_ series
    deadline = time.time() + 30
    while True:
        assert prom.poll() is None, procs.log(prom)[-3000:]
        try:
            q = requests.get(purl + "/api/v1/query", params={"query": "engram_process_start_time_seconds"},
                             timeout=5).json()
            series = {s["metric"]["instance"] for s in q["data"]["result"]}
            if series >= {f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"}:
                break
        except (requests.ConnectionError, ValueError, KeyError):
            pass
        assert time.time() < deadline, f"Prometheus has no engram_ series of both replicas: {procs.log(prom)[-3000:]}"
        time.sleep(0.5)
    q = requests.get(purl + "/api/v1/query", params={"query": "sum by (instance) (engram_generation_tokens_total)"},
                     timeout=5).json()
    assert q["status"] == "success" and q["data"]["result"], q
    q = requests.get(purl + "/api/v1/label/__name__/values", timeout=5).json()
    names = set(q["data"])
    assert {"engram_http_requests_total", "engram_num_requests_waiting", "engram_num_requests_running",
            "engram_time_to_first_token_seconds_bucket"} <= names, sorted(names)

    # every query of the Grafana dashboard runs on this Prometheus
    dash = json.loads((SOURCE / "deploy" / "grafana" / "engram.json").read_text())
    for panel in dash["panels"]:
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            q = requests.get(purl + "/api/v1/query", params={"query": expr}, timeout=5).json()
            assert q["status"] == "success", (panel["title"], expr, q)

    # 16 streams through nginx; SIGTERM replica A while it has some in flight
    results, first = [None] * N_STREAMS, [threading.Event() for _ in range(N_STREAMS)]
    threads = [threading.Thread(target=stream, args=(lb, i, results, first)) for i in range(N_STREAMS)]
    for t in threads:
        t.start()
    busy = ("engram_num_requests_running", "engram_num_requests_waiting")
    deadline = time.time() + 10
    while (in_flight_a := metric_sum(f"http://127.0.0.1:{pa}", busy)) < 2:  # the read that saw them (a second
        assert time.time() < deadline, "replica A never had requests in flight"  # read may find some done)
        time.sleep(0.005)
    a.send_signal(signal.SIGTERM)
    t_term = time.time()
    # while draining, /health says 503 so that load balancers and probes stop sending
    deadline = time.time() + 5
    while (r := requests.get(f"http://127.0.0.1:{pa}/health", timeout=5)).status_code == 200:
        assert time.time() < deadline, "replica A's /health stayed 200 after SIGTERM"
        time.sleep(0.005)
    assert r.status_code == 503 and r.headers.get("Retry-After") == "1"
    # a request that arrives now is retried by nginx on replica B
    r = requests.post(lb + "/v1/completions", json={"prompt": "Late", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    for t in threads:
        t.join(timeout=60)
    errors = [(i, res) for i, res in enumerate(results) if not isinstance(res, int)]
    assert not errors, f"{errors}\nA: {procs.log(a)[-2000:]}\nnginx: {procs.log(ng)[-2000:]}"
    assert all(res == MAX_TOKENS for res in results), results
    assert a.wait(timeout=30) == 0, procs.log(a)[-3000:]
    log_a = procs.log(a)
    assert "draining" in log_a and "aborting" not in log_a, log_a[-3000:]
    assert in_flight_a >= 2 and time.time() - t_term < 30

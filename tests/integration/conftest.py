"""Shared pytest helpers: where the build and the fixtures are, and a runner
for the command-line programs that checks they never die of a signal or a
sanitizer report."""
import os
import pathlib
import subprocess

import numpy as np
import pytest

SOURCE = pathlib.Path(os.environ.get("ENGRAM_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
BUILD = pathlib.Path(os.environ.get("ENGRAM_BUILD_DIR", SOURCE / "build"))
MODELS = SOURCE / "tests" / "fixtures" / "models"


def run_bin(name, *args, timeout=300, check=True):
    """Runs build/<name> with args; returns CompletedProcess. Never a crash."""
    exe = BUILD / name
    assert exe.exists(), f"{exe} not built"
    p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert p.returncode >= 0, f"{name} died of signal {-p.returncode}: {p.stderr[-2000:]}"
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr[-4000:]
    if check:
        assert p.returncode == 0, f"{name} {args} failed: {p.stderr[-2000:]}"
    return p


def greedy_logits(model_dir, tmp_path, chunk, prompt, *extra, max_tokens=24, check=True):
    """engram-run greedy on prompt (ids) in chunks of chunk: (printed id lines, the dumped logits as
    f32), or the CompletedProcess when check is False (a run expected to fail)."""
    lf = tmp_path / f"logits-{chunk}.f32"
    p = run_bin("engram-run", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)),
                "--temperature", "0", "--max-tokens", max_tokens, "--ignore-eos", "--print-ids",
                "--prefill-chunk", chunk, "--dump-logits", lf, *extra, check=check)
    if not check:
        return p
    return p.stdout.strip().splitlines(), np.fromfile(lf, dtype="<f4")


@pytest.fixture
def run():
    return run_bin

"""Shared pytest helpers: where the build and the fixtures are, and a runner
for the command-line programs that checks they never die of a signal or a
sanitizer report."""
import os
import pathlib
import subprocess

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


@pytest.fixture
def run():
    return run_bin

"""The default model (models/engram-lexicon, trained by tools/train) on the C
engine against its own PyTorch training code (tools/train/engram_torch.py via
export.py, f32 compute from the exported bf16 weights): last-position logits
within 1e-4, the same 24 greedy tokens, and the same Engram gates, for a chat
prompt rendered through the model's chat template."""
import json
import struct

import numpy as np

from conftest import SOURCE, run_bin

MODEL = SOURCE / "models" / "engram-lexicon"
GOLD = SOURCE / "tests" / "fixtures" / "default_model"


def test_default_model_matches_training_code(tmp_path):
    g = json.loads((GOLD / "golden.json").read_text())
    lf = tmp_path / "l.f32"
    p = run_bin("engram-run", "--model", MODEL, "--prompt", 'What does "memory" mean?', "--chat",
                "--temperature", "0", "--max-tokens", "24", "--ignore-eos", "--print-gates",
                "--print-ids", "--dump-logits", lf)
    lines = p.stdout.splitlines()
    assert json.loads(lines[-1]) == g["greedy_ids"]
    gates = json.loads(lines[-2])
    n = len(g["prompt_ids"])
    assert gates["tokens"][:n] == g["prompt_ids"]
    ours = np.array(gates["gates"])[:n]
    ref = np.array([g["gates"]["1"], g["gates"]["3"]]).T
    assert float(np.abs(ours - ref).max()) < 1e-4
    ref_l = np.fromfile(GOLD / "logits.f32", dtype="<f4")
    assert float(np.abs(np.fromfile(lf, dtype="<f4") - ref_l).max()) < 1e-4


def test_default_model_answers_in_its_domain():
    """Greedy chat output about a dictionary word is dictionary-like text."""
    p = run_bin("engram-run", "--model", MODEL, "--prompt", 'What does "river" mean?', "--chat",
                "--temperature", "0", "--max-tokens", "40")
    text = p.stdout
    assert "river" in text.lower()
    assert sum(ch.isalpha() for ch in text) > 40


def test_default_model_tensors_on_cache_lines():
    """Every tensor of the file starts on a 64-byte boundary (tools/align_safetensors.py;
    the CPU's products read rows in 64-byte vectors), so a re-export cannot lose it unseen."""
    with open(MODEL / "model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    starts = [8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"]
    assert len(starts) > 80 and [s for s in starts if s % 64] == []

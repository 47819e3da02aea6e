"""Golden tests of DeepSeek-V4.1's two-level candidate top-k on the CPU (candidate_source_layer_id,
candidate_topk_blocks, candidate_block_size), against the composition of transformers 5.25's
DeepseekV4ForCausalLM with SGLang 0.5.23's ratio-1/2 code and its own select_candidate_block_ids and
topk_among_blocks (candidate_blocks.py, run unchanged) in the torch path of v41_indexer/dense_blocks.py
(fixture deepseek_v41_candidates made by tools/make_deepseek_v41_fixture.py): compress_ratios
[2, 1, 1, 1, 1], kv sources [0, 1], index sources [0, 1, 2, 4], layer 1 the candidate source keeping 3
blocks of 4 entries per token (its newest block always), layers 2 and 4 selecting their top-4 among
those blocks' entries, layer 3 reusing layer 2's, layer 0 (before the source) the full top-k.
Logits within 1e-4 (max |logit| about 8), greedy tokens identical, decode (chunk 1) and chunked
prefill equal to the whole prefill bit for bit. The tool rejects seeds where the source's last kept
and first dropped block maxima, or a consumer's k-th and (k+1)-th candidate scores, are closer than
1e-5 (SGLang's topk has no tie rule), and seeds where the candidates change fewer than 10 rows."""
import json
import shutil

import numpy as np
import pytest

from conftest import MODELS, greedy_logits as run

NAME = "deepseek_v41_candidates"
SRC = MODELS / NAME
G = json.loads((SRC / "golden.json").read_text())


def test_logits_greedy_decode_and_chunks_match_reference(tmp_path):
    """Whole prefill, every chunking (at and away from block edges) and token-by-token decode: the
    reference's last logits and greedy tokens, and all of them the same bits."""
    ref = np.fromfile(SRC / "logits.f32", dtype="<f4")
    base = None
    for chunk in [256, 1, 3, 4, 7]:
        lines, logits = run(SRC, tmp_path, chunk, G["prompt_ids"])
        assert logits.shape == ref.shape and np.isfinite(logits).all()
        diff = float(np.abs(logits - ref).max())
        assert diff < 1e-4 * float(np.abs(ref).max()), f"chunk {chunk}: max |logit diff| {diff}"
        assert json.loads(lines[-1]) == G["greedy_ids"], chunk
        if base is None:
            base = logits
        assert np.array_equal(logits, base), chunk


def test_logits_at_prompt_positions(tmp_path):
    """Prefixes: fewer entries than the candidate span (every block kept), one block more, many more."""
    prompt = G["prompt_ids"]
    ref = np.fromfile(SRC / "logits_all.f32", dtype="<f4").reshape(len(prompt), -1)
    for n in [1, 4, 5, 12, 13, 17, 30, 44]:
        _, logits = run(SRC, tmp_path, 5, prompt[:n], max_tokens=1)
        diff = float(np.abs(logits - ref[n - 1]).max())
        assert diff < 1e-4 * float(np.abs(ref[n - 1]).max()), f"prefix {n}: max |logit diff| {diff}"


def test_fixture_exercises_the_candidates():
    c, low = G["v41_candidates"], G["v41_low_ratio"]
    assert low["candidate_source_layer_id"] == 1 and low["candidate_topk_blocks"] == 3
    assert low["candidate_block_size"] == 4 and low["index_source_layer_ids"] == [0, 1, 2, 4]
    assert c["min_block_gap"] >= 1e-5 and low["min_index_gap"] >= 1e-5
    assert c["source_rows_choosing_blocks"] >= 10 and c["consumer_rows_changed_by_candidates"] >= 10


def copy_fixture(tmp_path, **kv):
    d = tmp_path / "m"
    shutil.copytree(SRC, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kv)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("edit", [dict(candidate_source_layer_id=-1), dict(candidate_topk_blocks=2),
                                  dict(candidate_block_size=2), dict(candidate_source_layer_id=2)],
                         ids=["off", "fewer-blocks", "smaller-blocks", "layer2-source"])
def test_the_candidate_keys_are_read(edit, tmp_path):
    """Each key changes the logits: without candidates (the full top-k everywhere), with fewer or
    smaller blocks, or with layer 2 as the source (layer 1 then selects from all its entries)."""
    d = copy_fixture(tmp_path, **edit)
    _, logits = run(d, tmp_path, 256, G["prompt_ids"], max_tokens=1)
    ref = np.fromfile(SRC / "logits.f32", dtype="<f4")
    assert float(np.abs(logits - ref).max()) > 1e-2


def test_span_covering_every_entry_is_the_full_top_k(tmp_path):
    """Blocks enough for every entry of the prompt: the two-level top-k selects as the full one
    (low_ratio_decode_rows_fit_candidate_span's premise in SGLang), bit for bit."""
    span = copy_fixture(tmp_path, candidate_topk_blocks=64)
    _, a = run(span, tmp_path, 256, G["prompt_ids"], max_tokens=1)
    shutil.rmtree(span)
    off = copy_fixture(tmp_path, candidate_source_layer_id=-1)
    _, b = run(off, tmp_path, 256, G["prompt_ids"], max_tokens=1)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("edit,words", [
    (dict(candidate_source_layer_id=3), ["candidate_source_layer_id 3", "no index source"]),
    (dict(candidate_source_layer_id=0), ["index source layer 1", "compress ratio 1", "layer 0",
                                         "compress ratio 2", "across ratios"]),
    (dict(candidate_topk_blocks=0), ["candidate_topk_blocks (0)", "at least 1"]),
    (dict(candidate_block_size=0), ["candidate_block_size (0)", "at least 1"]),
    (dict(candidate_source_layer_id=9), ["candidate_source_layer_id 9"]),
], ids=["not-an-index-source", "across-ratios", "no-blocks", "empty-blocks", "out-of-range"])
def test_bad_candidate_layouts_are_refused(edit, words, tmp_path):
    d = copy_fixture(tmp_path, **edit)
    p = run(d, tmp_path, 256, G["prompt_ids"][:4], check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.strip().splitlines() if l]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]

"""Engram for training, in PyTorch, written from ../shared/ENGRAM.md (our own
implementation; the C engine is checked against DeepSeek's reference in
tests/integration/test_golden_engram.py, and against this module through the
default model's golden test).

  EngramHash    compressed tokenizer, NumPy multipliers, prime head sizes,
                row ids for a batch of token sequences (on the GPU)
  EngramModule  the module of one layer, parameter names as the reference's
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Regex, normalizers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from engram_primes import head_primes  # noqa: E402

_SENTINEL = "\uE000"


def compressed_lookup(tok):
    """lookup[id] and Vc for a `tokenizers.Tokenizer` (ENGRAM.md section 3,
    normalizing with the same `tokenizers` normalizer chain the reference uses)."""
    norm = normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "), normalizers.Replace(Regex(r"^ $"), _SENTINEL),
        normalizers.Strip(), normalizers.Replace(_SENTINEL, " ")])
    keys, lookup = {}, []
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        text = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" in text:
            key = tok.id_to_token(i)
        else:
            key = norm.normalize_str(text) or text
        lookup.append(keys.setdefault(key, len(keys)))
    return np.array(lookup, dtype=np.int64), len(keys)


class EngramHash:
    def __init__(self, cfg, lookup, vc):
        """cfg: the "engram" object of config.json (reference field names)."""
        self.cfg, self.vc = cfg, vc
        self.lookup = torch.from_numpy(lookup)
        self.pad = int(lookup[cfg["pad_id"]])
        N, heads = cfg["max_ngram_size"], cfg["n_head_per_ngram"]
        half = max(1, ((2**63 - 1) // vc) // 2)
        self.mult, self.offsets = {}, {}
        self.primes = head_primes(cfg["engram_vocab_size"], heads, cfg["layer_ids"])
        for lid in cfg["layer_ids"]:
            r = np.random.default_rng(cfg["seed"] + 10007 * lid).integers(0, half, size=N, dtype=np.int64)
            self.mult[lid] = (r * 2 + 1).tolist()
            self.offsets[lid] = np.concatenate([[0], np.cumsum(self.primes[lid])[:-1]]).tolist()

    def table_rows(self, lid):
        return sum(self.primes[lid])

    def rows(self, ids, lid):
        """ids (B, T) raw token ids (a tensor) -> (B, T, H) table rows; history before t=0 is pad."""
        c = self.lookup.to(ids.device)[ids]
        N, heads = self.cfg["max_ngram_size"], self.cfg["n_head_per_ngram"]
        m = self.mult[lid]
        shifted = [c] + [F.pad(c, (k, 0), value=self.pad)[:, :c.shape[1]] for k in range(1, N)]
        out = []
        for n in range(2, N + 1):
            mix = shifted[0] * m[0]
            for k in range(1, n):
                mix = torch.bitwise_xor(mix, shifted[k] * m[k])
            for j in range(heads):
                h = (n - 2) * heads + j
                out.append(mix % self.primes[lid][h] + self.offsets[lid][h])
        return torch.stack(out, dim=-1)


class _Namespace(nn.Module):
    pass


class EngramModule(nn.Module):
    """One Engram module, hc_mult 1, computed in f32 (its norms then use the f32
    epsilon, as the C engine does)."""

    def __init__(self, d, table_rows, cfg):
        super().__init__()
        D = cfg["n_embed_per_ngram"] // cfg["n_head_per_ngram"]
        E = (cfg["max_ngram_size"] - 1) * cfg["n_embed_per_ngram"]
        K, dil = cfg["kernel_size"], cfg["max_ngram_size"]
        self.d = d
        self.multi_head_embedding = _Namespace()
        self.multi_head_embedding.embedding = nn.Embedding(table_rows, D)
        self.value_proj = nn.Linear(E, d)
        self.key_projs = nn.ModuleList([nn.Linear(E, d)])
        self.norm1 = nn.ModuleList([nn.RMSNorm(d)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(d)])
        self.short_conv = _Namespace()
        self.short_conv.conv = nn.Conv1d(d, d, K, groups=d, bias=False, padding=(K - 1) * dil, dilation=dil)
        self.short_conv.norms = nn.ModuleList([nn.RMSNorm(d, eps=1e-5)])
        nn.init.normal_(self.multi_head_embedding.embedding.weight, std=0.5)
        self.last_gate = None

    def forward(self, h, rows):
        """h (B, T, d), rows (B, T, H) -> the module output (B, T, d) to add to h."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            e = self.multi_head_embedding.embedding(rows).flatten(-2)
            nk = self.norm1[0](self.key_projs[0](e))
            nq = self.norm2[0](h)
            s = (nk * nq).sum(-1) / math.sqrt(self.d)
            gate = torch.sigmoid(s.sign() * s.abs().clamp_min(1e-6).sqrt()).unsqueeze(-1)
            self.last_gate = gate.detach()
            v = gate * self.value_proj(e)
            x = self.short_conv.norms[0](v).transpose(1, 2)
            y = F.silu(self.short_conv.conv(x)[..., :h.shape[1]]).transpose(1, 2)
            return v + y

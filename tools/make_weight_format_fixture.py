#!/usr/bin/env python3
"""Golden fixture of the quantized weight formats (DEEPSEEK_V4.md 4.4) against transformers' own
dequantisation: FP8 e4m3 with block scales and FP4 e2m1 with per-32 scales, dequantized by
`Fp8Dequantize._dequantize_one` of transformers.integrations.finegrained_fp8 (the op that
`FineGrainedFP8Config(dequantize=True)` runs on every (weight, scale) pair at load).

Writes tests/fixtures/weight_formats/:
  weights.safetensors   the quantized matrices as a checkpoint stores them: `<name>.weight`
                        (F8_E4M3, or FP4 packed in I8 [N, K/2] or F4) with `<name>.scale` (release
                        naming) or `<name>.weight_scale_inv` (transformers' naming), F8_E8M0, U8 or F32
  expected.safetensors  `<name>` [N, K] F32: what transformers makes of each pair (output float32)
  golden.json           per matrix: rows, cols, format, scale naming and dtype, the block
                        transformers used, and what the case is for

Run with /work/fxvenv/bin/python (torch 2.15 CPU, transformers 5.25). Deterministic (seeded).
Note: transformers derives the block from the scale grid (rows // scale_rows, cols // scale_cols)
and refuses grids that do not divide the matrix; 200 x 300 with a [2, 3] grid is therefore read
in 100 x 100 blocks, not on the 128 grid that made the [2, 3] shape. The C loader matches it.
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers.integrations.finegrained_fp8 import Fp8Dequantize

E4M3 = torch.float8_e4m3fn
E8M0 = torch.float8_e8m0fnu
FINITE_E4M3 = [c for c in range(256) if c not in (0x7F, 0xFF)]


def fp8_codes(g, rows, cols, specials=True):
    """Random finite e4m3fn codes (every one of the 254 equally likely); row 0 holds the edge
    codes in its first columns: +-0, the smallest subnormals, the largest subnormal, the smallest
    normal, +-448. No NaN: these matrices also feed the product check."""
    pick = torch.tensor(FINITE_E4M3, dtype=torch.uint8)
    u = pick[torch.randint(0, len(FINITE_E4M3), (rows, cols), generator=g)]
    if specials:
        edge = [0x00, 0x80, 0x01, 0x81, 0x07, 0x08, 0x7E, 0xFE]
        u[0, : len(edge)] = torch.tensor(edge, dtype=torch.uint8)
    return u.view(E4M3)


def every_code_rows(rows):
    """rows x 256: row r holds all 256 e4m3fn codes (NaN included), rotated by r."""
    base = torch.arange(256, dtype=torch.int64)
    return torch.stack([torch.roll(base, r) for r in range(rows)]).to(torch.uint8)


def scale_bytes(g, shape, lo=112, hi=136):
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(torch.uint8)


def fp4_packed(g, rows, cols):
    """rows x cols e2m1 codes, every code present, packed two per byte (low nibble = even column)."""
    codes = torch.randint(0, 16, (rows, cols), generator=g, dtype=torch.int64)
    codes[0, :16] = torch.arange(16)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    return packed


def cases(g):
    """(name, weight tensor, scale tensor, scale naming, what it checks)."""
    out = []
    out.append(("fp8_a", fp8_codes(g, 200, 300), scale_bytes(g, (2, 3)).view(E8M0), "scale",
                "FP8 200x300, grid [2, 3] of the 128 blocks; transformers reads 100x100 blocks"))
    out.append(("fp8_b", fp8_codes(g, 130, 70), scale_bytes(g, (2, 1)), "scale",
                "FP8 130x70, U8 scale bytes, grid [2, 1]: 65-row blocks in transformers"))
    out.append(("fp8_c", fp8_codes(g, 128, 256), scale_bytes(g, (1, 2)).view(E8M0), "weight_scale_inv",
                "FP8 128x256 full blocks, transformers' weight_scale_inv naming"))
    f32_scale = torch.rand((2, 1), generator=g, dtype=torch.float32) * 0.01 + 1e-4
    out.append(("fp8_f32", fp8_codes(g, 160, 96), f32_scale, "scale",
                "FP8 160x96 with F32 multipliers (scale_fmt float): one rounded product"))
    edge = every_code_rows(16).view(E4M3)
    out.append(("fp8_edge_tiny_huge", edge, torch.tensor([[0, 254]], dtype=torch.uint8).view(E8M0), "scale",
                "every code (NaN too) times 2^-127 (f32 subnormals) and 2^127 (overflow to inf)"))
    out.append(("fp8_edge_nan", edge.clone(), torch.tensor([[255, 127]], dtype=torch.uint8).view(E8M0), "scale",
                "every code times the E8M0 NaN byte 255, and times 1"))
    out.append(("fp8_edge_u8", edge.clone(), torch.tensor([[255, 1]], dtype=torch.uint8), "scale",
                "U8 scale byte 255: transformers' exp2(255-127) = inf, not NaN; byte 1 = 2^-126"))
    out.append(("fp4_a", fp4_packed(g, 64, 96).view(torch.int8), scale_bytes(g, (64, 3)).view(E8M0), "scale",
                "FP4 64x96 in I8 [64, 48], scales [64, 3]; every code in row 0"))
    out.append(("fp4_b", fp4_packed(g, 48, 64).view(torch.int8), scale_bytes(g, (48, 2), 0, 255).view(E8M0),
                "weight_scale_inv", "FP4 48x64, scale bytes over 0..254, transformers' naming"))
    out.append(("fp4_c", fp4_packed(g, 8, 48).view(torch.int8), scale_bytes(g, (8, 2)).view(E8M0), "scale",
                "FP4 8x48: grid [8, 2] = ceil(48/32); transformers reads 24-column blocks"))
    out.append(("fp4_f4", fp4_packed(g, 16, 64).view(torch.float4_e2m1fn_x2), scale_bytes(g, (16, 2)).view(E8M0),
                "scale", "FP4 16x64 as torch.float4_e2m1fn_x2 (safetensors F4, shape in codes)"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                  "weight_formats"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(20260516)
    deq = Fp8Dequantize(hf_quantizer=None)
    weights, expected, meta = {}, {}, []
    for name, q, s, naming, what in cases(g):
        ref = deq._dequantize_one(q, s, output_dtype=torch.float32)
        assert ref.dtype == torch.float32
        fp4 = q.dtype in (torch.int8, torch.float4_e2m1fn_x2)
        rows, cols = ref.shape
        weights[name + ".weight"] = q.contiguous()
        weights[name + "." + naming] = s.contiguous()
        expected[name] = ref.contiguous()
        meta.append({"name": name, "rows": rows, "cols": cols, "format": "fp4" if fp4 else "fp8",
                     "weight_dtype": str(q.dtype).replace("torch.", ""), "scale_tensor": name + "." + naming,
                     "scale_dtype": str(s.dtype).replace("torch.", ""), "scale_shape": list(s.shape),
                     "transformers_block": [rows // s.shape[0], cols // s.shape[1]],
                     "nan": int(torch.isnan(ref).sum()), "inf": int(torch.isinf(ref).sum()),
                     "what": what})
    save_file(weights, os.path.join(args.out, "weights.safetensors"))
    save_file(expected, os.path.join(args.out, "expected.safetensors"))
    golden = {"tool": "tools/make_weight_format_fixture.py",
              "reference": "transformers %s integrations.finegrained_fp8.Fp8Dequantize._dequantize_one "
                           "(output float32), torch %s" % (transformers.__version__, torch.__version__),
              "config_weight_block_size": [128, 128],
              "matrices": meta}
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    for m in meta:
        print(m["name"], m["rows"], m["cols"], m["format"], m["scale_dtype"], m["transformers_block"],
              "nan", m["nan"], "inf", m["inf"])


if __name__ == "__main__":
    main()

"""What the Transformer ablation's attention costs on a CPU, and what a cheaper kernel could save.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --pieces   # the band without masked pairs, in mask-free pieces

One torch thread, float32, forward and backward of ``F.scaled_dot_product_attention`` on the
shapes the default profile's training step gives it (8 windows of 1,024 frames, ``model.
attention_window`` 512, d_model 32): the whole band as the model computes it today (blocks of 512
queries against 512 and 1,024 keys under a boolean mask), the same blocks with no mask and with
``is_causal`` (does PyTorch's CPU flash kernel skip masked work?), one head of 32 against two of
16, and the cost per (query, key) pair. ``models.transformer`` is the code path measured. Writes
benchmarks/results/attention.json.

``--pieces`` asks whether the kernel's masked pairs can be avoided. Today's band (blocks of 128
queries against the ``window + 127`` keys their band reaches, ``model.attention_window`` 384, one
head of 32) computes about a third more (query, key) pairs than the band holds. Every block's band
is three pieces that need no mask: the block's own keys (a causal square, ``is_causal``), the keys
every query of the block sees (dense), and the oldest keys (a square whose mask is causal once
queries and keys are reversed). Each piece goes through the same CPU flash kernel and the three
are merged by their log-sum-exps; the backward gives each piece the merged output and
log-sum-exp, so each piece's gradients are exact. The mode checks that form against a dense band
in float64, times it against ``models.transformer._BandAttentionCPU`` (one layer's attention,
forward and backward, on the training batch, the two in turn), and times single kernel calls of
each shape: whether the kernel skips masked or non-causal pairs at all. Writes
benchmarks/results/attention_pieces.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402


def _time(fn, repeats: int = 7) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def _pieces(length: int, w: int, c: int) -> list[tuple[int, int, list[tuple[str, int, int]]]]:
    """Per block of ``c`` queries [s, e): the mask-free pieces of its band, (kind, first key, end).

    Query i sees keys i - w < j <= i. With lo = s - w + 1 and n = e - s: keys [lo, lo + n) are
    seen by query s + t when j - lo >= t ("reversed": causal after reversing both), keys
    [lo + n, s) by every query ("dense"), keys [s, e) causally ("causal"). Near the start, where
    the band is cut by the sequence, or for blocks of ``w`` queries or more, a block that the three do
    not fit is one masked piece."""
    blocks = []
    for s in range(0, length, c):
        e = min(s + c, length)
        n, lo = e - s, s - w + 1
        if lo >= 0 and n <= w - 1:
            ps = [("reversed", lo, lo + n)] + ([("dense", lo + n, s)] if lo + n < s else [])
        elif e <= w:  # every query sees every earlier key
            ps = [("dense", 0, s)] if s > 0 else []
        else:
            blocks.append((s, e, [("masked", max(lo, 0), e)]))
            continue
        blocks.append((s, e, ps + [("causal", s, e)]))
    return blocks


def _piece_attention(transformer):
    """The band in mask-free pieces on the CPU flash kernel (an autograd function over qkv)."""
    import torch

    fwd, bwd, heads_view = transformer._flash_fwd, transformer._flash_bwd, transformer._heads_view

    class Pieces(torch.autograd.Function):
        @staticmethod
        def forward(ctx, qkv, blocks, w):
            b, length, d3 = qkv.shape
            q, k, v = heads_view(qkv, 1)
            out = qkv.new_empty(b, length, 1, d3 // 3)
            masks = _masks(transformer, blocks, length, w, qkv.dtype)
            saved = []
            for s, e, ps in blocks:
                os_, ls_ = [], []
                for kind, k0, k1 in ps:
                    qb, kb, vb = q[:, :, s:e], k[:, :, k0:k1], v[:, :, k0:k1]
                    if kind == "reversed":
                        o, lse = fwd(qb.flip(2), kb.flip(2), vb.flip(2), is_causal=True)
                        o, lse = o.flip(2), lse.flip(2)
                    elif kind == "masked":
                        o, lse = fwd(qb, kb, vb, attn_mask=masks[s, k0])
                    else:
                        o, lse = fwd(qb, kb, vb, is_causal=kind == "causal")
                    os_.append(o)
                    ls_.append(lse)
                lse = torch.logsumexp(torch.stack(ls_), 0)
                o = sum(oi * torch.exp(li - lse).unsqueeze(-1) for oi, li in zip(os_, ls_))
                out[:, s:e] = o.transpose(1, 2)
                saved += [o, lse]
            ctx.blocks, ctx.masks = blocks, masks
            ctx.save_for_backward(qkv, *saved)
            return out.view(b, length, d3 // 3)

        @staticmethod
        def backward(ctx, grad):
            qkv, *saved = ctx.saved_tensors
            b, length, d3 = qkv.shape
            q, k, v = heads_view(qkv, 1)
            g = grad.contiguous().view(b, length, 1, -1).transpose(1, 2)
            gqkv = torch.zeros_like(qkv)
            gq, gk, gv = heads_view(gqkv, 1)
            for i, (s, e, ps) in enumerate(ctx.blocks):
                o, lse = saved[2 * i], saved[2 * i + 1]
                for kind, k0, k1 in ps:
                    args = (g[:, :, s:e], q[:, :, s:e], k[:, :, k0:k1], v[:, :, k0:k1], o, lse)
                    if kind == "reversed":
                        dq, dk, dv = (t.flip(2) for t in bwd(*(a.flip(2) for a in args), 0.0, True))
                    elif kind == "masked":
                        dq, dk, dv = bwd(*args, 0.0, False, attn_mask=ctx.masks[s, k0])
                    else:
                        dq, dk, dv = bwd(*args, 0.0, kind == "causal")
                    gq[:, :, s:e] += dq
                    gk[:, :, k0:k1] += dk
                    gv[:, :, k0:k1] += dv
            return gqkv, None, None

    return Pieces


def _masks(transformer, blocks, length: int, w: int, dtype) -> dict:
    """The model's band masks (``models.transformer._cpu_band_masks``) by (first query, first key),
    for the blocks that are one masked piece: such a piece is exactly the model's block."""
    c = blocks[0][1] - blocks[0][0]
    return {(s, k0): m for s, e, k0, m in transformer._cpu_band_masks(length, w, c, dtype)}


def pieces(args) -> int:
    import torch
    import torch.nn.functional as F

    from mambava.config import load_config

    tr = importlib.import_module("mambava.models.transformer")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = load_config().model
    b, length, d, w = 8, 1024, m.d_model, m.attention_window
    if m.n_heads != 1:
        raise SystemExit("--pieces measures one head (the default's model.n_heads: 1)")
    pieces_fn = _piece_attention(tr).apply
    block = tr.TransformerLayer.query_block

    # correctness: float64, against one SDPA call under the dense band mask
    x = torch.randn(b, length, 3 * d, dtype=torch.float64, requires_grad=True)
    go = torch.randn(b, length, d, dtype=torch.float64)
    q, k, v = tr._heads_view(x, 1)
    i = torch.arange(length)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=(i[None] <= i[:, None]) & (i[None] > i[:, None] - w))
    ref = ref.transpose(1, 2).reshape(b, length, d)
    (gref,) = torch.autograd.grad(ref, x, go)
    sizes = [c for c in args.blocks if c < w]
    errors = {}
    for c in sizes:
        y = pieces_fn(x, _pieces(length, w, c), w)
        (gy,) = torch.autograd.grad(y, x, go)
        errors[c] = max((y - ref).abs().max().item(), (gy - gref).abs().max().item())
        print(f"pieces, blocks of {c}: largest difference from the dense band (float64, values and gradients) "
              f"{errors[c]:.1e}")
        if errors[c] > 1e-10:
            raise SystemExit("the pieces do not compute the band")

    # one layer's attention, forward and backward, float32, the forms in turn
    x = torch.randn(b, length, 3 * d, requires_grad=True)
    go = torch.randn(b, length, d)
    masks = tr._cpu_band_masks(length, w, min(block, w), x.dtype)

    def today():
        torch.autograd.grad(tr._BandAttentionCPU.apply(x, 1, masks), x, go)

    forms = {f"today: blocks of {block}, band mask": today}
    for c in sizes:
        bl = _pieces(length, w, c)
        forms[f"pieces, blocks of {c}"] = (lambda bl=bl: torch.autograd.grad(pieces_fn(x, bl, w), x, go))
    times = {name: [] for name in forms}
    for fn in forms.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in forms.items():
            t0 = time.perf_counter()
            for _ in range(3):
                fn()
            times[name].append((time.perf_counter() - t0) / 3)
    base = statistics.median(times[next(iter(forms))])
    rows = [[name, f"{1000 * statistics.median(t):.1f} ms", f"{1000 * min(t):.1f}-{1000 * max(t):.1f} ms",
             f"{statistics.median(t) / base:.2f}"] for name, t in times.items()]
    band_pairs = sum(min(j + 1, w) for j in range(length))
    today_pairs = sum(e - k0 for s, e, k0, _ in masks) * min(block, w)
    print(f"\none layer's attention, forward + backward, batch {b} x {length} frames, 1 head of {d}, window {w}, "
          f"one thread; {args.rounds} rounds, the forms in turn; pairs a window: band {band_pairs:,}, "
          f"today's blocks {today_pairs:,}")
    print_table(["form", "median", "range", "/ today"], rows)

    # single kernel calls: is a masked, causal or unmasked pair the same price?
    calls = []
    full_mask = masks[-1][3]  # the last block's: block queries against all w + block - 1 keys
    assert full_mask.shape == (block, w + block - 1)
    for label, lq, lk, kind in (
        (f"{block} x {w + block - 1}, band mask", block, w + block - 1, "mask"),
        (f"{block} x {w + block - 1}, no mask", block, w + block - 1, "none"),
        (f"{block} x {block}, is_causal", block, block, "causal"),
        (f"{block} x {block}, no mask", block, block, "none"),
        (f"{block} x {w - 1 - block}, no mask", block, w - 1 - block, "none"),
        (f"{length} x {length}, is_causal", length, length, "causal"),
        (f"{length} x {length}, no mask", length, length, "none"),
    ):
        qb, kb, vb = (torch.randn(b, 1, n, d) for n in (lq, lk, lk))
        kw = {"mask": {"attn_mask": full_mask}, "causal": {"is_causal": True},
              "none": {}}[kind]
        bkw = {"attn_mask": kw["attn_mask"]} if kind == "mask" else {}
        o, lse = tr._flash_fwd(qb, kb, vb, **kw)
        g = torch.randn_like(o)
        f = _time(lambda: tr._flash_fwd(qb, kb, vb, **kw), repeats=25)
        bk = _time(lambda: tr._flash_bwd(g, qb, kb, vb, o, lse, 0.0, kind == "causal", **bkw), repeats=25)
        pairs = b * lq * lk
        calls.append({"call": label, "forward_ms": 1000 * f, "backward_ms": 1000 * bk,
                      "ns_per_pair_forward": 1e9 * f / pairs, "ns_per_pair_backward": 1e9 * bk / pairs})
    print("\nsingle kernel calls (batch 8, 1 head of 32; pairs counted as queries x keys, masked or not)")
    print_table(["call", "forward", "backward", "ns a pair, forward", "ns a pair, backward"],
                [[c["call"], f"{c['forward_ms']:.2f} ms", f"{c['backward_ms']:.2f} ms",
                  f"{c['ns_per_pair_forward']:.2f}", f"{c['ns_per_pair_backward']:.2f}"] for c in calls])
    path = write_json(f"attention_pieces{'_' + args.tag if args.tag else ''}.json", {
        "machine": machine(), "batch": b, "length": length, "d_model": d, "window": w, "query_block": block,
        "rounds": args.rounds, "max_abs_error_float64": {str(c): e for c, e in errors.items()},
        "pairs_per_window": {"band": band_pairs, "today": today_pairs},
        "forms_ms": {name: [1000 * x for x in t] for name, t in times.items()}, "calls": calls})
    print(f"wrote {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", action="store_true", help="the band in mask-free pieces against today's blocks")
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, 192, 256, 383],
                    help="query blocks for --pieces (default: 128 192 256 383)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds of the forms in turn (--pieces)")
    ap.add_argument("--tag", default="", help="--pieces writes attention_pieces_<tag>.json")
    args = ap.parse_args()
    if args.pieces:
        return pieces(args)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, results = [], []
    b, length, d = 8, 1024, 32
    for heads in (2, 1):
        dh = d // heads
        for label, lq, lk, kw in (
            ("block 0: 512 x 512, band mask", 512, 512, "mask"),
            ("block 0: 512 x 512, is_causal", 512, 512, "causal"),
            ("block 0: 512 x 512, no mask", 512, 512, "none"),
            ("block 1: 512 x 1,024, band mask", 512, 1024, "mask"),
            ("block 1: 512 x 1,024, no mask", 512, 1024, "none"),
        ):
            # the model's memory layout: (batch, length, heads, dim) viewed as (batch, heads, length, dim)
            q = torch.randn(b, lq, heads, dh).transpose(1, 2).requires_grad_()
            k = torch.randn(b, lk, heads, dh).transpose(1, 2).requires_grad_()
            v = torch.randn(b, lk, heads, dh).transpose(1, 2).requires_grad_()
            qpos = torch.arange(lk - lq, lk)[:, None]
            kpos = torch.arange(lk)[None, :]
            extra = {"mask": {"attn_mask": (kpos <= qpos) & (kpos > qpos - 512)}, "causal": {"is_causal": True},
                     "none": {}}[kw]
            fwd = _time(lambda: F.scaled_dot_product_attention(q, k, v, **extra))
            both = _time(lambda: F.scaled_dot_product_attention(q, k, v, **extra).sum().backward())
            pairs = b * lq * lk
            results.append({"heads": heads, "head_dim": dh, "case": label, "forward_ms": 1000 * fwd,
                            "forward_backward_ms": 1000 * both, "ns_per_pair": 1e9 * both / pairs})
            rows.append([f"{heads} x {dh}", label, f"{1000 * fwd:.1f} ms", f"{1000 * both:.1f} ms",
                         f"{1e9 * both / pairs:.2f} ns"])
    print(f"one torch thread; batch {b}, windows of {length} frames, d_model {d}")
    print_table(["heads", "block", "forward", "forward + backward", "per (query, key) pair"], rows)
    path = write_json("attention.json", {"machine": machine(), "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

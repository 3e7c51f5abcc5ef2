"""benchmarks/bench_attention.py --pieces: the band in mask-free pieces is the band."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from _bench import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_attention")


def _visible(kind: str, s: int, k0: int, q: int, j: int) -> bool:
    """Which (query, key) pairs a piece's kernel call lets through (its own mask semantics)."""
    if kind == "dense":
        return True
    if kind == "causal":  # top-left causal square
        return j - k0 <= q - s
    if kind == "reversed":  # causal after reversing queries and keys of an n x n square
        return j - k0 >= q - s
    raise AssertionError(kind)


@pytest.mark.parametrize("length, w, c", [(200, 48, 16), (200, 48, 47), (200, 48, 20), (97, 30, 64), (1024, 384, 128)])
def test_pieces_cover_the_band_once(bench, length, w, c):
    seen = torch.zeros(length, length, dtype=torch.int32)
    for s, e, ps in bench._pieces(length, w, c):
        for kind, k0, k1 in ps:
            for q in range(s, e):
                for j in range(k0, k1):
                    if kind == "masked":
                        seen[q, j] += int(q - w < j <= q)
                    elif _visible(kind, s, k0, q, j):
                        seen[q, j] += 1
    i = torch.arange(length)
    band = ((i[None] <= i[:, None]) & (i[None] > i[:, None] - w)).int()
    assert torch.equal(seen, band)


@pytest.mark.parametrize("c", [16, 20, 47, 64])
def test_pieces_compute_the_band_and_its_gradients(bench, c):
    tr = importlib.import_module("mambava.models.transformer")
    torch.manual_seed(0)
    length, w, d = 200, 48, 8
    x = torch.randn(2, length, 3 * d, dtype=torch.float64, requires_grad=True)
    go = torch.randn(2, length, d, dtype=torch.float64)
    q, k, v = (t.transpose(1, 2) for t in x.view(2, length, 3, 1, d).unbind(2))
    i = torch.arange(length)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=(i[None] <= i[:, None]) & (i[None] > i[:, None] - w))
    ref = ref.transpose(1, 2).reshape(2, length, d)
    (gref,) = torch.autograd.grad(ref, x, go)
    y = bench._piece_attention(tr).apply(x, bench._pieces(length, w, c), w)
    (gy,) = torch.autograd.grad(y, x, go)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gy, gref, rtol=0, atol=1e-12)

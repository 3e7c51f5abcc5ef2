"""benchmarks/bench_temporal.py --ops: which kind each profiled operator is counted under."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_temporal", REPO / "benchmarks" / "bench_temporal.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("name, kind", [
    ("aten::mm", "matrix products"),
    ("aten::addmm", "matrix products"),
    ("aten::t", "copies and layout"),
    ("aten::threshold_backward", "element-wise"),  # not a layout op for starting like aten::t
    ("aten::copy_", "copies and layout"),
    ("aten::clamp_min", "element-wise"),
    ("aten::convolution_backward", "convolutions"),
    ("_NumbaScanBackward", "selective scan (numba)"),
    ("_ConvActBackward", "conv passes (numba)"),
    ("_ConvSilu", "conv passes (numba)"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("aten::_foreach_mul_", "optimiser"),
    ("Optimizer.step#AdamW.step", "optimiser"),
    ("aten::_weight_norm_interface", "normalisation"),
    ("aten::native_layer_norm_backward", "normalisation"),
    ("aten::sum", "reductions"),
    ("autograd::engine::evaluate_function: MmBackward0", "autograd and Python"),
    ("_ShiftSumBackward", "autograd and Python"),
])
def test_operator_kinds(bench, name, kind):
    assert bench._op_kind(name) == kind

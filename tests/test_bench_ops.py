"""benchmarks/bench_temporal.py --ops: which kind each profiled operator is counted under."""

from __future__ import annotations

import pytest

from _bench import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_temporal")


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

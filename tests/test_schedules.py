"""mambava.schedules (PyTorch's SequentialLR of LinearLR and a cosine) against the closed-form
learning rates, including across a save/restore of the scheduler state as in last.pt."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

from mambava.schedules import warmup_cosine


def closed_form(step: int, base: float, warm: int, period: int, mult: int, eta_min: float, restarts: bool) -> float:
    """The schedule written out: step i (from 0) of the warm-up runs at base * (i + 1) / warm; then
    eta_min + (base - eta_min) (1 + cos(pi t / T)) / 2 with t the steps into the current period
    of length T (restarts: T = period, period * mult, ...; else one period, flat after it)."""
    if step < warm:
        return base * (step + 1) / warm
    t, T = step - warm, period
    if restarts:
        while t >= T:
            t, T = t - T, T * mult
    else:
        t = min(t, T)
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


def lrs(sched_args, n, base=3e-3, state=None, start=0):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    sched = warmup_cosine(opt, *sched_args[:2], **sched_args[2])
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    out = []
    for _ in range(start, n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt, sched


@pytest.mark.parametrize("warm,period,mult,eta_min,restarts", [
    (5, 7, 1, 1e-4, True), (5, 7, 2, 1e-4, True), (13, 26, 1, 0.0, True), (1, 3, 3, 0.0, True),
    (0, 4, 1, 0.0, True), (25, 225, 1, 0.0, False), (20, 380, 1, 0.0, False), (0, 10, 1, 0.0, False)])
def test_schedule_is_the_closed_form(warm, period, mult, eta_min, restarts):
    n = warm + (period * 5 if restarts else period)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation or ordering warning from the schedulers
        got, _, _ = lrs((warm, period, dict(mult=mult, eta_min=eta_min, restarts=restarts)), n)
    want = [closed_form(i, 3e-3, warm, period, mult, eta_min, restarts) for i in range(n)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    if warm:
        assert got[warm] == pytest.approx(3e-3)  # the cosine starts at the top


def test_restored_scheduler_continues_the_same_sequence():
    args = (4, 6, dict(mult=2, eta_min=1e-5))
    whole, _, _ = lrs(args, 40)
    _, opt, sched = lrs(args, 17)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)  # as in last.pt
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    rest, _, _ = lrs(args, 40, state=state, start=17)
    assert rest == pytest.approx(whole[17:], rel=1e-12)

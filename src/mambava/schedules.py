"""Learning-rate schedules, stepped once per optimizer step: PyTorch's own schedulers.

Both schedules of the project are a linear warm-up followed by a cosine:

- training (``mambava.train``): warm-up, then cosine annealing with warm restarts
  (``CosineAnnealingWarmRestarts``: periods of ``period`` steps, x ``mult`` after each restart,
  down to ``eta_min``);
- MAE pretraining and fine-tuning (``mambava.features.pretrain``/``finetune``): warm-up, then one
  half-cosine to 0 at the last step (``CosineAnnealingLR``).

The warm-up is ``LinearLR`` from 1/warmup of the base rate to the base rate over the first
``warmup`` steps (step i, counted from 0, runs at (i + 1)/warmup of it), and ``SequentialLR``
hands over to the cosine at step ``warmup``, where the cosine starts at the base rate. The
scheduler's ``state_dict`` (saved in ``last.pt``) resumes the same sequence.

The encoders' optimisers (MAE pretraining, face pretraining, fine-tuning) share
:func:`param_groups`: AdamW without weight decay on biases, norms, positions and tokens.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    LRScheduler,
    SequentialLR,
)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, period: int, mult: int = 1, eta_min: float = 0.0,
                  restarts: bool = True) -> LRScheduler:
    """Linear warm-up over ``warmup`` steps, then cosine annealing: with warm restarts every
    ``period`` steps (x ``mult``) when ``restarts``, else one half-cosine over ``period`` steps
    (and ``eta_min`` after it). ``eta_min`` is an absolute learning rate, as in PyTorch."""
    period = max(1, int(period))
    cosine = (CosineAnnealingWarmRestarts(opt, T_0=period, T_mult=int(mult), eta_min=eta_min) if restarts
              else CosineAnnealingLR(opt, T_max=period, eta_min=eta_min))
    if warmup <= 0:
        return cosine
    linear = LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return SequentialLR(opt, [linear, cosine], milestones=[int(warmup)])


def param_groups(params, weight_decay: float):
    """AdamW groups: no weight decay on biases, norms, positions and tokens (1-D or 3-D tensors)."""
    decay, no_decay = [], []
    for name, p in params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim != 2 and p.ndim != 4 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

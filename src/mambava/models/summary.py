"""``mambava model summary``: the layer table and parameter count of a profile's model."""

from __future__ import annotations

import torch
from torch import nn

from mambava.config import ModelConfig


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(model: nn.Module, input_dim: int, length: int = 32, depth: int = 3) -> list[tuple[str, str, str, int]]:
    """(name, type, output shape, parameters) of every module up to ``depth`` levels, from one
    forward of a (1, length, input_dim) input."""
    shapes: dict[str, str] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name and name.count(".") < depth:
            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor):
                    shapes[name] = "x".join(map(str, out.shape))
            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, length, input_dim))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for name, mod in model.named_modules():
        if name and name.count(".") < depth:
            rows.append((name, type(mod).__name__, shapes.get(name, ""), count_parameters(mod)))
    return rows


def print_summary(model_cfg: ModelConfig, depth: int = 3) -> None:
    """Print the modules (to ``depth`` levels), their output shapes and parameters, and the total."""
    from mambava.models.mamba_va import MambaVA

    model = MambaVA(model_cfg)
    rows = layer_table(model, model_cfg.input_dim, depth=depth)
    w = max(len(r[0]) + 2 * r[0].count(".") for r in rows)
    print(f"{'module':<{w}}  {'type':<20} {'output (1 x 32 frames)':>24} {'parameters':>12}")
    for name, kind, shape, n in rows:
        label = "  " * name.count(".") + name.split(".")[-1] if "." in name else name
        print(f"{label:<{w}}  {kind:<20} {shape:>24} {n:>12,}")
    print(f"total parameters: {count_parameters(model):,}")
    print(
        f"tcn={model_cfg.tcn} temporal={model_cfg.temporal} input_dim={model_cfg.input_dim} "
        f"d_model={model_cfg.d_model} n_layers={model_cfg.n_layers} scan_backend={model_cfg.scan_backend}"
    )

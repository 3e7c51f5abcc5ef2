"""The temporal model and its ablation variants.

The variants are configurations of one class (:class:`mambava.models.mamba_va.MambaVA`), built
by small functions from the profile's ``ModelConfig``; this registry is the one list of them
(:data:`VARIANTS`, with the book's :data:`VARIANT_LABELS`)::

    cfg = variant_config(config.model, "no_tcn")
    model = build_model(cfg)

- ``mamba_va``: the paper's model (TCN, Mamba);
- ``no_tcn``: features go straight to a Linear(input_dim, d_model), then the Mamba stack;
- ``no_mamba``: TCN and head only (``temporal: none``): what the TCN alone achieves;
- ``transformer``: a Transformer encoder in place of the Mamba stack;
- ``frame``: no TCN and no temporal encoder: the head on each frame alone, the reference that
  shows what any temporal model adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports this registry (VARIANTS), so no import of config here
    from mambava.config import ModelConfig

VariantFn = Callable[["ModelConfig"], "ModelConfig"]
_VARIANTS: dict[str, VariantFn] = {}
_LABELS: dict[str, str] = {}


def register_variant(name: str, label: str) -> Callable[[VariantFn], VariantFn]:
    """Add a variant (``name``, as in params.yaml's ``variants:``; ``label``, as the book shows it)."""
    def deco(fn: VariantFn) -> VariantFn:
        _VARIANTS[name] = fn
        _LABELS[name] = label
        return fn

    return deco


def _with(cfg: ModelConfig, **changes) -> ModelConfig:
    # Validate again, so that a variant can never produce a config that params.yaml could not.
    return type(cfg).model_validate({**cfg.model_dump(), **changes})


@register_variant("mamba_va", "Mamba-VA (TCN + Mamba)")
def mamba_va(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="mamba")


@register_variant("no_tcn", "no TCN (Mamba only)")
def no_tcn(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=False, temporal="mamba")


@register_variant("no_mamba", "no Mamba (TCN only)")
def no_mamba(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="none")


@register_variant("transformer", "TCN + Transformer")
def transformer(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="transformer")


@register_variant("frame", "frame only (no TCN, no temporal model)")
def frame(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=False, temporal="none")


# The study's variants in their order (config, report, the CLI and, through params.yaml's
# ``variants:``, dvc.yaml's matrices all read these), and how the book names them.
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
VARIANT_LABELS: dict[str, str] = dict(_LABELS)


def variant_config(cfg: ModelConfig, name: str) -> ModelConfig:
    """The ModelConfig of variant ``name`` derived from ``cfg``."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(_VARIANTS)}")
    return _VARIANTS[name](cfg)


def build_model(cfg: ModelConfig, variant: str | None = None):
    """A MambaVA for ``cfg`` (or for one of its variants)."""
    from mambava.models.mamba_va import MambaVA

    return MambaVA(variant_config(cfg, variant) if variant else cfg)

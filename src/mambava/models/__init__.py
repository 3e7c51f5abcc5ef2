"""The temporal model and its ablation variants.

The variants are configurations of one class (:class:`mambava.models.mamba_va.MambaVA`), built
by small functions from the profile's ``ModelConfig``, one per name of :mod:`mambava.variants`
(the one list of them, :data:`VARIANTS`, with the book's :data:`VARIANT_LABELS`, and what each
variant is)::

    cfg = variant_config(config.model, "no_tcn")
    model = build_model(cfg)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mambava.variants import VARIANT_LABELS, VARIANTS  # noqa: F401  (re-exported: the one registry)

if TYPE_CHECKING:
    from mambava.config import ModelConfig

VariantFn = Callable[["ModelConfig"], "ModelConfig"]
_VARIANTS: dict[str, VariantFn] = {}


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Build variant ``name`` (one of :data:`mambava.variants.VARIANTS`) with the decorated function."""
    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not in mambava.variants.VARIANTS; add it there first")

    def deco(fn: VariantFn) -> VariantFn:
        _VARIANTS[name] = fn
        return fn

    return deco


def _with(cfg: ModelConfig, **changes) -> ModelConfig:
    # Validate again, so that a variant can never produce a config that params.yaml could not.
    return type(cfg).model_validate({**cfg.model_dump(), **changes})


@register_variant("mamba_va")
def mamba_va(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="mamba")


@register_variant("no_tcn")
def no_tcn(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=False, temporal="mamba")


@register_variant("no_mamba")
def no_mamba(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="none")


@register_variant("transformer")
def transformer(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=True, temporal="transformer")


@register_variant("frame")
def frame(cfg: ModelConfig) -> ModelConfig:
    return _with(cfg, tcn=False, temporal="none")


if set(_VARIANTS) != set(VARIANTS):  # every name has a builder, and no builder lacks a name
    raise RuntimeError(f"variants without a builder or name: {sorted(set(_VARIANTS) ^ set(VARIANTS))}")


def variant_config(cfg: ModelConfig, name: str) -> ModelConfig:
    """The ModelConfig of variant ``name`` derived from ``cfg``."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return _VARIANTS[name](cfg)


def settings_read(cfg: ModelConfig) -> dict:
    """The settings of ``cfg`` its model reads (:func:`mambava.models.mamba_va.settings_read`)."""
    from mambava.models.mamba_va import settings_read as read

    return read(cfg)


def code_read(cfg: ModelConfig) -> list[str]:
    """The model modules ``cfg``'s model runs (:func:`mambava.models.mamba_va.code_read`)."""
    from mambava.models.mamba_va import code_read as read

    return read(cfg)


def build_model(cfg: ModelConfig, variant: str | None = None):
    """A MambaVA for ``cfg`` (or for one of its variants)."""
    from mambava.models.mamba_va import MambaVA

    return MambaVA(variant_config(cfg, variant) if variant else cfg)

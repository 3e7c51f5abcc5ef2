"""The study's model variants by name: the one list of them and how the book names them.

Below both :mod:`mambava.config` (params.yaml's ``variants:`` and ``book.variant`` are checked
against :data:`VARIANTS`) and :mod:`mambava.models` (which builds each variant's ``ModelConfig``),
so neither imports the other for it. The order is the study's (config, report, the CLI and,
through params.yaml's ``variants:``, dvc.yaml's matrices all read it):

- ``mamba_va``: the paper's model (TCN, Mamba);
- ``no_tcn``: features go straight to a Linear(input_dim, d_model), then the Mamba stack;
- ``no_mamba``: TCN and head only (``temporal: none``): what the TCN alone achieves;
- ``transformer``: a Transformer encoder in place of the Mamba stack;
- ``frame``: no TCN and no temporal encoder: the head on each frame alone, the reference that
  shows what any temporal model adds.
"""

from __future__ import annotations

# name (as in params.yaml's ``variants:``) -> label (as the book shows it)
VARIANT_LABELS: dict[str, str] = {
    "mamba_va": "Mamba-VA (TCN + Mamba)",
    "no_tcn": "no TCN (Mamba only)",
    "no_mamba": "no Mamba (TCN only)",
    "transformer": "TCN + Transformer",
    "frame": "frame only (no TCN, no temporal model)",
}
VARIANTS: tuple[str, ...] = tuple(VARIANT_LABELS)

"""mambava: Mamba-VA, continuous valence-arousal recognition, reproduced as a DVC pipeline."""

__version__ = "0.1.0"

"""Aff-Wild2 data: the official layout (affwild2), the synthetic twin (synthetic), the stage (prepare)."""

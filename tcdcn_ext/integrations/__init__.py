"""Adapters to engines people already run (each imports its engine only when used): :mod:`.ray` for Ray Data."""

__all__: list[str] = []

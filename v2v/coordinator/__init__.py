"""Coordinator: drives guests through the phase services; the `v2v` CLI."""

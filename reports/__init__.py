"""Comparison reports built from Result files (not built yet)."""

"""Thin shared utilities every method stands on (see docs/ARCHITECTURE.md)."""

"""Benchmarks run with ``pytest bench/`` (plain ``pytest`` runs tests/ only)."""

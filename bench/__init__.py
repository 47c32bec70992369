"""Benchmarks (`mailaudit bench ...`)."""

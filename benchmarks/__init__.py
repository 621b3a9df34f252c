"""Benchmarks of the Refusal Atlas engine; see benchmarks/README.md."""

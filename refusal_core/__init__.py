"""Refusal Atlas engine: find, inspect, ablate and export refusal directions."""

"""Refusal by category: per-category directions and discriminants (``fit``), the ablation
matrix and conditional ablation measured on the test split (``matrix``)."""

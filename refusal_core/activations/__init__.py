"""Residual activations: extraction at post-instruction positions (``extract``), the
content-keyed on-disk cache and hash helpers (``cache``), and how well each layer
separates harmful from harmless prompts (``separation``)."""

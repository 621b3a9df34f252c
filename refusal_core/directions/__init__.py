"""Direction sets: ``DirectionSet`` and its files (``base``, ``archive``), the one
provenance builder (``provenance``), the method registry (``registry``) and one module
per method (``dim``, ``som``, ``per_prompt``, ``clustering``, ``optimize``)."""

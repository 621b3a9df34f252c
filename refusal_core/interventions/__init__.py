"""Switching directions off and on: linear algebra (``linalg``), what to do to a forward
pass (``spec``), the hooks that do it (``hooks``), reversible weight edits (``weights``)
and the orthogonalized-model export (``export``)."""

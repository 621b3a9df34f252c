"""Choosing directions: candidate scoring (``scoring``), its saved result (``result``),
the chosen-else-closest policy and set names (``policy``), and the Optuna subset search
(``search``)."""

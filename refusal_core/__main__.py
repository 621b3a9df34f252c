"""``python -m refusal_core``: see refusal_core.cli."""

import os
import sys

# Before torch starts OpenMP (as app.py does): with the default ACTIVE policy a thread that
# waits at a barrier spins while its partner is descheduled by another process, and on a
# small shared CPU that made candidate scoring several times slower (benchmarks/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from refusal_core.cli import main  # noqa: E402

sys.exit(main())

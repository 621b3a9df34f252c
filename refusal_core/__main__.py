"""``python -m refusal_core``: see refusal_core.cli."""

import sys

from refusal_core.cli import main

sys.exit(main())

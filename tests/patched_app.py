"""``streamlit run`` in this process with test stand-ins applied first (see tests/app_hooks.py).

    python -m tests.patched_app [--tiny] [--no-umap-warm-up] -- app.py --server.port 8501 ...

Everything after ``--`` is passed to ``streamlit run``. The stand-ins patch modules that app.py
imports, so they hold in every session the server runs.
"""

from __future__ import annotations

import argparse
import sys

from tests.app_hooks import Permanent, no_umap_warm_up, use_tiny_models


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m tests.patched_app")
    parser.add_argument(
        "--tiny", action="store_true", help="bundled specs load tiny:llama; the organism counts as built"
    )
    parser.add_argument("--no-umap-warm-up", action="store_true", help="do not start the background UMAP warm-up")
    args = parser.parse_args(argv[:cut])
    if args.tiny:
        use_tiny_models(Permanent())
    if args.no_umap_warm_up:
        no_umap_warm_up(Permanent())
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", *argv[cut + 1 :]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())

"""Cost of the 2-D maps: UMAP (umap-learn) against PCA on 512 points of width 576.

``fit_projection(points, "umap")`` is timed three ways: the import of umap-learn, the first
fit in a fresh process (numba compiles UMAP's kernels then; only a few are cached on
disk), and warm fits, interleaved with PCA fits of the same points. ``--warm-tiny`` fits
40 tiny points before the first fit, which shows that the first-call cost is compilation
(independent of the data) and can be paid once at app start.

Points are seeded random by default: two Gaussian clusters (like harmful and harmless
prompts) with a few high-variance dimensions, as residual streams have. ``--real`` uses the
residual stream of built-in prompts at the middle layer instead (extracted through the
activation cache, so it costs forward passes the first time).

Run from the repository root: ``.venv/bin/python benchmarks/bench_projection.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First: it sets OMP_WAIT_POLICY before torch is imported.
import numpy as np  # noqa: E402

from benchmarks._common import Case, Report, Timings, apply_threads, base_parser, interleave, timed  # noqa: E402
from refusal_core.projection import fit_projection  # noqa: E402

UMAP_GOAL_S = 10.0


def random_points(n_points: int, width: int, seed: int) -> np.ndarray:
    """``[n_points, width]`` float32: two shifted Gaussian clusters, 8 dimensions 20x wider."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n_points, width)).astype(np.float32)
    points[:, :8] *= 20.0
    points[n_points // 2 :] += 3.0 * rng.standard_normal(width).astype(np.float32)
    return points


def real_points(model: str, n_points: int) -> np.ndarray:
    """Residual stream at the last token, middle layer, of ``n_points`` built-in prompts."""
    from refusal_core.activations.extract import extract_activations
    from refusal_core.model.loading import load_model
    from refusal_core.prompts.loaders import builtin

    loaded = load_model(model)
    harmful = builtin("harmful").instructions
    harmless = builtin("harmless").instructions
    instructions = [*harmful, *harmless][:n_points]
    if len(instructions) < n_points:
        raise SystemExit(f"only {len(instructions)} built-in prompts exist; ask for at most that many points")
    acts = extract_activations(loaded, instructions, positions=[-1], batch_size=32)
    return acts.block_input(loaded.n_layers // 2, -1).numpy()


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--points", type=int, default=512, help="number of points (default: %(default)s)")
    parser.add_argument("--width", type=int, default=576, help="width of random points (default: %(default)s)")
    parser.add_argument("--real", action="store_true", help="use real activations of --model instead of random points")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points and of UMAP (default: %(default)s)")
    parser.add_argument(
        "--warm-tiny",
        action="store_true",
        help="fit UMAP on 40 tiny points first, to show that the first-call cost is compilation, not data",
    )
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report("bench_projection", vars(args))
    points = real_points(args.model, args.points) if args.real else random_points(args.points, args.width, args.seed)
    report.note(f"{'real' if args.real else 'random'} points {points.shape[0]} x {points.shape[1]}, 2-D maps")

    first = Timings()
    import_wall, import_cpu, _ = timed(lambda: __import__("umap"))
    first.add("import umap", import_wall, import_cpu)
    # umap-learn brings scipy and scikit-learn, whose BLAS pools apply_threads had not seen.
    apply_threads(args.threads)
    if args.warm_tiny:
        tiny = random_points(40, 16, args.seed)
        tiny_wall, tiny_cpu, _ = timed(lambda: fit_projection(tiny, "umap", 2, seed=args.seed))
        first.add("umap warm-up fit, 40 x 16 points", tiny_wall, tiny_cpu)
    first_wall, first_cpu, _ = timed(lambda: fit_projection(points, "umap", 2, seed=args.seed))
    first.add(
        "umap first fit, after tiny warm-up" if args.warm_tiny else "umap first fit in process (JIT)",
        first_wall,
        first_cpu,
    )
    report.add_times(first)

    cases = [
        Case("umap fit (warm)", lambda: fit_projection(points, "umap", 2, seed=args.seed)),
        Case("pca fit", lambda: fit_projection(points, "pca", 2, seed=args.seed)),
    ]
    report.add_times(interleave(cases, args.repeats))
    goal, check = f"< {UMAP_GOAL_S:.0f} s", lambda seconds: seconds < UMAP_GOAL_S
    warm = report.times["umap fit (warm)"]["median_s"]
    report.add_value("umap_2d_warm", warm, "s", goal, check(warm))
    if not args.warm_tiny:
        cold = import_wall + first_wall
        report.add_value("umap_2d_first_call_incl_import", cold, "s", goal, check(cold))
    report.compare("umap_vs_pca", "umap fit (warm)", "pca fit", "none, for scale")
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()

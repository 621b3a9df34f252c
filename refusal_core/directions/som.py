"""Self-Organizing Map refusal directions (Piras et al., "SOM Directions are Better than One").

A SOM is trained on the harmful prompts' residual representations at one layer and
position. Each neuron's weight vector is a prototype of a group of harmful prompts; the
prototype minus the harmless centroid (mean harmless representation) is one refusal
direction. A 1x1 map's single neuron is the harmful mean, so its direction is the
difference-in-means (DIM) direction: the SOM generalises DIM from one to many directions.

Training uses MiniSom, the library the paper uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.directions.registry import DirectionMethod, FitInput, register, setting
from refusal_core.errors import SettingsError

__all__ = ["METHOD", "SomResult", "SomSettings", "fit", "neuron_prompts", "pca_grid", "som_direction_set", "train_som"]

TOPOLOGIES = ("rectangular", "hexagonal")
NEIGHBORHOODS = ("gaussian", "bubble", "mexican_hat")
INITIALIZATIONS = ("pca", "random")
ORDERS = ("hits", "grid")
# MiniSom's schedules: the learning rate falls linearly to zero, so the map settles; the
# neighbourhood spread falls to a third of its start, so neighbours are pulled together
# early (the grid unfolds) and each neuron fits its own prompts late.
LEARNING_RATE_DECAY = "linear_decay_to_zero"
SIGMA_DECAY = "asymptotic_decay"


@dataclass(frozen=True)
class SomSettings:
    """How the map is shaped and trained.

    ``x`` and ``y`` are the grid size (``x * y`` neurons, hence directions); ``sigma`` is the
    initial neighbourhood spread in grid units (it decays to a third over training);
    ``learning_rate`` the initial step size (it decays linearly to zero); ``iterations`` the
    number of single-sample updates; ``topology`` the grid ("rectangular": 4 neighbours,
    "hexagonal": 6); ``neighborhood`` MiniSom's neighbourhood function; ``initialization``
    "pca" (the grid laid flat over the harmful prompts' first two principal components, see
    ``pca_grid``) or "random" (neurons at randomly chosen prompts); ``seed`` makes the
    initialisation and sample order reproducible.
    """

    x: int = setting(3, "grid rows (x * y neurons, hence directions)", label="Grid x", minimum=1, maximum=20)
    y: int = setting(3, "grid columns", label="Grid y", minimum=1, maximum=20)
    sigma: float = setting(
        1.5, "initial neighbourhood spread, in grid units (decays to a third)", minimum=0.05, maximum=20.0
    )
    learning_rate: float = setting(0.5, "initial step size (decays linearly to zero)", minimum=0.001, maximum=5.0)
    iterations: int = setting(2000, "single-sample updates", minimum=1, maximum=200000)
    topology: str = setting("rectangular", "grid: rectangular (4 neighbours) or hexagonal (6)", choices=TOPOLOGIES)
    neighborhood: str = setting("gaussian", "MiniSom's neighbourhood function", choices=NEIGHBORHOODS)
    initialization: str = setting(
        "pca",
        "pca: the grid laid flat over the first two principal components; random: at random prompts",
        choices=INITIALIZATIONS,
    )
    seed: int = setting(0, "seeds the initialisation and the sample order", minimum=0)

    def __post_init__(self) -> None:
        for name in ("x", "y", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(
                    f"SomSettings.{name} must be a positive integer, got {value!r}; give 1 or more (--{name.replace('_', '-')})."
                )
        for name in ("sigma", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SettingsError(f"SomSettings.{name} must be a positive finite number, got {value!r}.")
        if self.topology not in TOPOLOGIES:
            raise SettingsError(f"Unknown SOM topology {self.topology!r}; use one of {', '.join(TOPOLOGIES)}.")
        if self.neighborhood not in NEIGHBORHOODS:
            raise SettingsError(
                f"Unknown SOM neighborhood {self.neighborhood!r}; use one of {', '.join(NEIGHBORHOODS)}."
            )
        if self.initialization not in INITIALIZATIONS:
            raise SettingsError(
                f"Unknown SOM initialization {self.initialization!r}; use one of {', '.join(INITIALIZATIONS)}."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SettingsError(f"SomSettings.seed must be a non-negative integer, got {self.seed!r}.")

    @property
    def n_neurons(self) -> int:
        return self.x * self.y


@dataclass(frozen=True)
class SomResult:
    """A trained map. Neuron ``k`` sits at grid cell ``(k // y, k % y)`` (row-major).

    ``weights`` ``[x*y, d]`` float32 neuron prototypes; ``coordinates`` ``[x*y, 2]`` where to
    draw each neuron (MiniSom's Euclidean coordinates, so hexagonal rows are offset);
    ``edges`` pairs ``(a, b)``, ``a < b``, of neighbouring neurons in the topology;
    ``hits`` ``[x*y]`` how many harmful prompts each neuron wins; ``winners`` ``[n_harmful]``
    the winning neuron of each harmful prompt; ``quantization_error`` mean distance of a
    prompt to its winner; ``spread`` mean distance of a prompt to the harmful mean (the
    quantization error of a 1x1 map, a yardstick for the former); ``topographic_error``
    share of prompts whose two best neurons are not adjacent (MiniSom's definition, where
    diagonal cells of a rectangular grid count as adjacent; NaN for a 1x1 map, where it is
    undefined); ``harmless_centroid`` ``[d]`` float32 mean harmless representation.
    """

    weights: torch.Tensor
    coordinates: torch.Tensor
    edges: tuple[tuple[int, int], ...]
    hits: torch.Tensor
    winners: torch.Tensor
    quantization_error: float
    topographic_error: float
    settings: SomSettings
    harmless_centroid: torch.Tensor
    spread: float = float("nan")

    @property
    def n_neurons(self) -> int:
        return int(self.weights.shape[0])

    def grid_position(self, neuron: int) -> tuple[int, int]:
        """``(i, j)`` grid cell of neuron index ``neuron``."""
        return divmod(int(neuron), self.settings.y)

    def edge_paths(self, placed: np.ndarray) -> list[list[float | None]]:
        """Per axis of ``placed`` ``[x*y, k]`` (neurons in some map), the grid edges as one
        path with None between edges, as plotting libraries draw separate line segments."""
        paths: list[list[float | None]] = [[] for _ in range(placed.shape[1])]
        for a, b in self.edges:
            for axis, path in enumerate(paths):
                path += [float(placed[a, axis]), float(placed[b, axis]), None]
        return paths

    def node_sizes(self, smallest: float, spread: float) -> list[float]:
        """Marker sizes growing with the square root of each neuron's hits (the busiest gets ``smallest + spread``)."""
        hits = self.hits.double()
        return (smallest + spread * (hits / max(float(hits.max()), 1.0)).sqrt()).tolist()

    def directions(self) -> torch.Tensor:
        """``[x*y, d]`` float32: each neuron minus the harmless centroid."""
        return (self.weights.double() - self.harmless_centroid.double()).float()


def _check_data(harmful: torch.Tensor, harmless: torch.Tensor) -> None:
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.shape[0] == 0:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"{name} representations must be a non-empty [n_prompts, d_model] tensor, got {shape}.")
        if not torch.isfinite(data).all():
            raise ValueError(f"{name} representations contain NaN or infinite values; check the model dtype.")
    if harmful.shape[1] != harmless.shape[1]:
        raise ValueError(
            f"Widths differ: harmful {harmful.shape[1]} vs harmless {harmless.shape[1]}; use one layer of one model."
        )


def _grid_edges(coordinates: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Neighbour pairs: neurons exactly one unit apart in MiniSom's Euclidean layout.

    Rectangular cells are one unit apart along rows and columns (4 neighbours); MiniSom
    places hexagonal rows sqrt(3)/2 apart and offsets alternate rows by 1/2, so all six
    hexagonal neighbours are also one unit away. This is the adjacency test MiniSom's
    hexagonal topographic error uses, so the drawing and the library agree on neighbours.
    """
    distances = np.linalg.norm(coordinates[:, None, :] - coordinates[None, :, :], axis=-1)
    pairs = np.argwhere(np.isclose(distances, 1.0))
    return tuple((int(a), int(b)) for a, b in pairs if a < b)


def _make_som(settings: SomSettings, width: int):
    try:
        from minisom import MiniSom
    except ImportError as err:  # pragma: no cover - minisom is an engine dependency
        raise ImportError("SOM directions need MiniSom: pip install minisom") from err
    # A 1x1 map is never trained (see _fit_weights); its sigma would only trip MiniSom's
    # "sigma too high for the map" warning.
    return MiniSom(
        settings.x,
        settings.y,
        width,
        sigma=settings.sigma if settings.n_neurons > 1 else 1.0,
        learning_rate=settings.learning_rate,
        decay_function=LEARNING_RATE_DECAY,
        sigma_decay_function=SIGMA_DECAY,
        neighborhood_function=settings.neighborhood,
        topology=settings.topology,
        random_seed=settings.seed,
    )


def pca_grid(data: np.ndarray, x: int, y: int) -> np.ndarray:
    """``[x, y, d]`` neurons evenly spaced over the plane of ``data``'s first two principal components.

    Cell ``(i, j)`` sits at ``mean + a_i * s1 * pc1 + b_j * s2 * pc2`` with ``a``, ``b``
    evenly spaced in [-1, 1] and ``s1``, ``s2`` the data's standard deviations along the
    components, so the grid covers the bulk of the data whatever its scale. (MiniSom's own
    ``pca_weights_init`` spans one unit, not one standard deviation, which for residual
    activations with norms in the hundreds puts every neuron near the mean.) The components
    come from an SVD of the centred ``[n, d]`` data, never a ``d x d`` covariance. With a
    single component (or one prompt) the second axis collapses onto the first's plane.
    """
    mean = data.mean(axis=0)
    centred = data - mean
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    scale = singular / math.sqrt(max(len(data) - 1, 1))
    axes = [components[k] * scale[k] if k < len(scale) else np.zeros_like(mean) for k in (0, 1)]
    grid = np.empty((x, y, data.shape[1]))
    for i, a in enumerate(np.linspace(-1, 1, x) if x > 1 else [0.0]):
        for j, b in enumerate(np.linspace(-1, 1, y) if y > 1 else [0.0]):
            grid[i, j] = mean + a * axes[0] + b * axes[1]
    return grid


def _fit_weights(som, data: np.ndarray, settings: SomSettings) -> np.ndarray:
    """Trained neuron weights ``[x*y, d]`` float64.

    With ``initialization="pca"`` (the default) the grid starts flat over the first two
    principal components (``pca_grid``), already ordered like the data, so training only
    refines it; started at random prompts instead, a 3x3 map of real activations often
    stayed folded (neighbouring cells far apart, a topographic error near one half). MiniSom
    has no public setter for a whole initial grid, so the array is written into its
    ``_weights``. Training is MiniSom's ``train(..., random_order=True)``, whose sample
    order comes from the seeded generator, so equal inputs and seed give identical weights.

    A 1x1 map is set to its exact fixed point instead. With one neuron every update is
    ``w += lr(t) * (x - w)``, whose only fixed point is the data mean, but MiniSom's
    learning rate decays only to a third of its start, so the neuron keeps tracking recent
    samples (about 57% relative error from the mean on 100 random 64-d prompts with the
    defaults, still ~10% with decay-to-zero schedules and 10x more iterations). The exact
    mean is what the map converges to in the limit, and it makes the 1x1 direction equal DIM.
    """
    if settings.n_neurons == 1:
        return data.mean(axis=0, keepdims=True)
    if settings.initialization == "pca":
        som._weights[...] = pca_grid(data, settings.x, settings.y)
    else:
        som.random_weights_init(data)
    som.train(data, settings.iterations, random_order=True)
    return som.get_weights().reshape(settings.n_neurons, -1).copy()


def _winners(data: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[n]`` index of the nearest neuron (Euclidean, MiniSom's activation distance).

    Distances are taken directly, one neuron at a time, rather than through the expanded
    ``|x|^2 - 2 x.w + |w|^2``, which loses precision when activations are large and close.
    """
    distances = np.stack([np.linalg.norm(data - neuron, axis=1) for neuron in weights], axis=1)
    return distances.argmin(axis=1)


def train_som(harmful: torch.Tensor, harmless: torch.Tensor, settings: SomSettings | None = None) -> SomResult:
    """Train a SOM on ``harmful`` ``[n, d]`` and keep ``harmless`` ``[m, d]``'s centroid.

    Data are converted to float64 before training so prototypes of large activations keep
    their precision. See ``_fit_weights`` for the initialisation and the 1x1 special case.
    """
    settings = settings or SomSettings()
    _check_data(harmful, harmless)
    data = harmful.detach().cpu().double().numpy()
    som = _make_som(settings, data.shape[1])
    weights = _fit_weights(som, data, settings)
    winners = _winners(data, weights)
    xx, yy = som.get_euclidean_coordinates()
    coordinates = np.stack([xx.reshape(-1), yy.reshape(-1)], axis=1)
    if settings.n_neurons > 1:
        topographic_error = float(som.topographic_error(data))
    else:
        topographic_error = float("nan")
    return SomResult(
        weights=torch.from_numpy(weights).float(),
        coordinates=torch.from_numpy(coordinates.astype(np.float64)),
        edges=_grid_edges(coordinates),
        hits=torch.from_numpy(np.bincount(winners, minlength=settings.n_neurons)).long(),
        winners=torch.from_numpy(winners).long(),
        quantization_error=float(np.linalg.norm(data - weights[winners], axis=1).mean()),
        topographic_error=topographic_error,
        settings=settings,
        harmless_centroid=harmless.detach().cpu().double().mean(0).float(),
        spread=float(np.linalg.norm(data - data.mean(axis=0), axis=1).mean()),
    )


def _neuron_order(result: SomResult, order: str) -> list[int]:
    if order not in ORDERS:
        raise SettingsError(f"Unknown order {order!r}; use one of {', '.join(ORDERS)}.")
    if order == "grid":
        return list(range(result.n_neurons))
    hits = result.hits.tolist()
    # Most-visited prototypes first: they stand for the most harmful prompts.
    return sorted(range(result.n_neurons), key=lambda k: (-hits[k], k))


def som_direction_set(result: SomResult, provenance: dict, order: str = "hits") -> DirectionSet:
    """One direction per neuron, ``som/{i}-{j}``: neuron weight minus the harmless centroid.

    ``order="hits"`` sorts by hit count, descending (ties by neuron index); ``"grid"``
    keeps row-major order. ``provenance`` holds model, layer, position and data hash;
    method, grid cell, hits and the settings (in ``params``) are added per direction.
    A neuron exactly on the harmless centroid has no direction and is left out (listed in
    ``meta["dropped"]``).
    """
    directions = result.directions()
    settings = dataclasses.asdict(result.settings)
    vectors, names, records, dropped = [], [], [], []
    for neuron in _neuron_order(result, order):
        i, j = result.grid_position(neuron)
        name = f"som/{i}-{j}"
        if not bool(directions[neuron].any()):
            dropped.append(name)
            continue
        vectors.append(directions[neuron])
        names.append(name)
        records.append(
            {
                **provenance,
                "method": "som",
                "neuron": neuron,
                "grid": [i, j],
                "hits": int(result.hits[neuron]),
                "params": {**provenance.get("params", {}), **settings},
            }
        )
    if not vectors:
        raise DirectionError("Every SOM neuron equals the harmless centroid; the harmful and harmless data coincide.")
    meta = {
        **provenance,
        "method": "som",
        "grid": [result.settings.x, result.settings.y],
        "quantization_error": result.quantization_error,
        "topographic_error": result.topographic_error,
        "dropped": dropped,
    }
    return DirectionSet(vectors=torch.stack(vectors), names=tuple(names), provenance=tuple(records), meta=meta)


def neuron_prompts(
    result: SomResult, instructions: Sequence[str], categories: Sequence[str] | None = None
) -> dict[int, list[tuple[str, str | None]]]:
    """Which harmful prompts each neuron wins: ``{neuron: [(instruction, category), ...]}``.

    Every neuron is a key (empty list when it wins nothing); prompts keep their input
    order. ``instructions`` (and ``categories``, if given) align with the harmful data.
    """
    n = int(result.winners.shape[0])
    if len(instructions) != n:
        raise ValueError(
            f"{len(instructions)} instructions for {n} harmful representations; pass the prompts the SOM learnt from."
        )
    if categories is not None and len(categories) != n:
        raise ValueError(f"{len(categories)} categories for {n} instructions; they must align.")
    groups: dict[int, list[tuple[str, str | None]]] = {k: [] for k in range(result.n_neurons)}
    for index, neuron in enumerate(result.winners.tolist()):
        groups[neuron].append((instructions[index], categories[index] if categories is not None else None))
    return groups


def fit(data: FitInput, settings: SomSettings) -> DirectionSet:
    """SOM directions from the harmful and harmless representations at ``data.layer``/``position``."""
    harmful, harmless = data.layer_points()
    result = train_som(harmful, harmless, settings)
    return som_direction_set(result, data.provenance("som", at_layer=True))


def summary(directions: DirectionSet) -> tuple[dict, list[str]]:
    meta = directions.meta
    payload = {
        "names": list(directions.names),
        "hits": [p.get("hits") for p in directions.provenance],
        "quantization_error": meta["quantization_error"],
        "topographic_error": meta["topographic_error"],
    }
    x, y = meta["grid"]
    lines = [
        f"SOM {x}x{y} ({directions.provenance[0]['params']['topology']}) at layer {meta['layer']}, position {meta['position']}: "
        f"quantization error {meta['quantization_error']:.3f}, topographic error {meta['topographic_error']:.3f}"
    ]
    lines += [f"  {name:12s} hits {hits}" for name, hits in zip(payload["names"], payload["hits"])]
    return payload, lines


METHOD = register(
    DirectionMethod(
        name="som",
        title="Self-organizing map",
        help="Self-Organizing Map directions at one layer (Piras et al.)",
        settings=SomSettings,
        fit=fit,
        reads="layer",
        summary=summary,
    )
)

"""Neural regions: reduce each layer's activations to a low-dimensional map and cut it into a grid.

The reducer is fit once per layer on *all* documents, so every category lives in the same
coordinate system and category pictures and graphs can be compared cell for cell (the
original LLM-MRI refits per category in its N-d mode).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .errors import LlmriError

REDUCERS = ("pca", "svd", "umap")


def make_reducer(reducer, n_components: int, seed: int):
    """A fresh reducer: a name from REDUCERS, or a copy of any object with ``fit_transform``."""
    if isinstance(reducer, str):
        if reducer == "pca":
            from sklearn.decomposition import PCA
            return PCA(n_components=n_components, random_state=seed)
        if reducer == "svd":
            from sklearn.decomposition import TruncatedSVD
            return TruncatedSVD(n_components=n_components, random_state=seed)
        if reducer == "umap":
            try:
                import umap
            except ImportError:
                raise LlmriError("reducer 'umap' needs umap-learn: pip install umap-learn") from None
            return umap.UMAP(n_components=n_components, random_state=seed)
        raise LlmriError(f"reducer {reducer!r} is not one of {', '.join(REDUCERS)}, "
                         "or an object with fit_transform")
    if not hasattr(reducer, "fit_transform"):
        raise LlmriError(f"reducer: {type(reducer).__name__} has no fit_transform method")
    try:
        from sklearn.base import clone
        return clone(reducer)
    except Exception:
        return copy.deepcopy(reducer)


BINNINGS = ("floor", "llm-mri")
SIGNS = ("align", "largest-positive", "reducer")
PRESETS = {"llm-mri": dict(scale=True, binning="llm-mri", signs="largest-positive")}


def orient(Z: np.ndarray, signs: str, previous: np.ndarray | None = None) -> np.ndarray:
    """Per-component signs (+1/-1) for coordinates ``Z`` ``[n, k]``.

    ``"align"``: each component points the way it pointed at the previous layer (its correlation
    with the previous layer's same component is >= 0), so a map does not flip arbitrarily from
    layer to layer. ``"largest-positive"``: the document farthest out on a component has a positive
    coordinate (torchdr's PCA, which LLM-MRI uses). ``"reducer"``: as the reducer returned them.

    >>> orient(np.array([[1.0], [-3.0]]), "largest-positive").tolist()
    [-1.0]
    """
    k = Z.shape[1]
    if signs == "largest-positive":
        return np.where(Z[np.abs(Z).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
    if signs == "align" and previous is not None:
        a, b = Z - Z.mean(0), previous - previous.mean(0)
        return np.where((a * b).sum(0) < 0, -1.0, 1.0)
    return np.ones(k)


def grid_cells(coords: np.ndarray, grid: int, binning: str = "floor",
               atol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins over each component's range: cells ``[n, k]`` and edges ``[k, grid + 1]``.

    ``binning="floor"``: cell ``floor((x - min) / width)``, the maximum in the last cell.
    ``binning="llm-mri"``: ``pandas.cut`` as LLM-MRI uses it: right-closed bins, the lowest edge
    lowered by 0.1 % of the range so the minimum falls in the first cell.
    A constant component (range ``<= atol``: a layer identical for every document, up to float
    rounding) puts every document in the middle cell ``(grid - 1) // 2``, as ``pandas.cut`` does.

    >>> grid_cells(np.array([[0.0], [0.5], [1.0]]), 2)[0].ravel().tolist()
    [0, 1, 1]
    >>> grid_cells(np.array([[0.0], [0.5], [1.0]]), 2, binning="llm-mri")[0].ravel().tolist()
    [0, 0, 1]
    """
    if binning not in BINNINGS:
        raise LlmriError(f"binning {binning!r} is not one of {', '.join(BINNINGS)}")
    lo, hi = coords.min(0), coords.max(0)
    constant = (hi - lo) <= atol
    span = np.where(constant, 1.0, hi - lo)
    edges = lo[:, None] + np.linspace(0.0, 1.0, grid + 1)[None, :] * span[:, None]
    if binning == "floor":
        cells = np.floor((coords - lo) / span * grid).astype(np.int64)
    else:
        edges = np.stack([np.linspace(a, b, grid + 1) for a, b in zip(lo, lo + span)])
        edges[:, 0] -= 0.001 * span
        cells = np.stack([np.searchsorted(edges[j], coords[:, j], side="left") - 1
                          for j in range(coords.shape[1])], axis=1).astype(np.int64)
    cells = np.clip(cells, 0, grid - 1)
    cells[:, constant] = (grid - 1) // 2
    return cells, edges


@dataclass
class RegionMap:
    """Per-layer low-dimensional coordinates of every document and their grid cells."""

    layers: list[int]
    n_components: int
    grid: int
    reducer: str
    seed: int
    site: str
    labels: np.ndarray
    label_names: list[str]
    texts: list[str]
    _coords: dict[int, np.ndarray] = field(repr=False)
    _cells: dict[int, np.ndarray] = field(repr=False)
    _edges: dict[int, np.ndarray] = field(repr=False)
    explained_variance_: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _components: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    scale: bool = False
    binning: str = "floor"
    preset: str | None = None

    @property
    def n_docs(self) -> int:
        return len(self.labels)

    def _check(self, layer: int) -> int:
        if layer not in self._coords:
            raise LlmriError(f"layer {layer} is not in this region map; layers: {self.layers}")
        return layer

    def coords(self, layer: int) -> np.ndarray:
        """``[n_docs, n_components]`` coordinates of every document at ``layer``."""
        return self._coords[self._check(layer)]

    def cells(self, layer: int) -> np.ndarray:
        """Each document's grid cell ``(x, y)`` at ``layer``, as ``[n_docs, 2]`` integers."""
        if self.n_components != 2:
            raise LlmriError(f"cells need a 2-component map; this one has {self.n_components} "
                             "(the N-d NRAG uses components directly)")
        return self._cells[self._check(layer)]

    def components(self, layer: int) -> np.ndarray:
        """The reducer's directions ``[n_components, dim]`` at ``layer`` (PCA and SVD), e.g. to
        ablate the map's axes with ``llmri.ablate(model, {"resid.L": rm.components(L)})``."""
        self._check(layer)
        if layer not in self._components:
            raise LlmriError(f"reducer {self.reducer} has no linear components (use pca or svd)")
        return self._components[layer]

    def cell_edges(self, layer: int) -> np.ndarray:
        """Bin edges ``[n_components, grid + 1]`` of the grid at ``layer``."""
        return self._edges[self._check(layer)]

    def category_mask(self, categories=None) -> np.ndarray:
        """Boolean mask of the documents in ``categories`` (names or label indices; None = all)."""
        if categories is None:
            return np.ones(self.n_docs, dtype=bool)
        if isinstance(categories, (str, int, np.integer)):
            categories = [categories]
        return np.isin(self.labels, self.category_ids(categories))

    def category_ids(self, categories) -> list[int]:
        ids = []
        for c in categories:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not 0 <= c < len(self.label_names):
                    raise LlmriError(f"category {c} is out of range; categories: {self.label_names}")
                ids.append(int(c))
            elif str(c) in self.label_names:
                ids.append(self.label_names.index(str(c)))
            else:
                raise LlmriError(f"unknown category {c!r}; categories: {self.label_names}")
        return ids

    def counts(self, layer: int, categories=None) -> np.ndarray:
        """Documents per grid cell at ``layer``: ``[grid (y), grid (x)]``, rows are y."""
        cells = self.cells(layer)[self.category_mask(categories)]
        out = np.zeros((self.grid, self.grid), dtype=np.int64)
        np.add.at(out, (cells[:, 1], cells[:, 0]), 1)
        return out

    def documents_in(self, layer: int, x: int, y: int, categories=None) -> np.ndarray:
        """Indices of the documents in cell ``(x, y)`` at ``layer``."""
        cells = self.cells(layer)
        hit = (cells[:, 0] == x) & (cells[:, 1] == y) & self.category_mask(categories)
        return np.flatnonzero(hit)


def regions(scan, reducer="pca", n_components: int = 2, grid: int = 10, seed: int = 0,
            site: str = "resid", layers=None, progress: bool | None = None, scale: bool | None = None,
            binning: str | None = None, signs: str | None = None, preset: str | None = None) -> RegionMap:
    """Fit ``reducer`` once per layer on all documents of ``scan`` and grid the map.

    ``scale=True`` standardises each layer's activations (zero mean, unit variance per dimension,
    as scikit-learn's StandardScaler) before the reducer; ``binning`` is ``"floor"`` or
    ``"llm-mri"`` (see :func:`grid_cells`). ``preset="llm-mri"`` sets both as LLM-MRI 0.2.1
    does (``scale=True, binning="llm-mri", signs="largest-positive"``), which reproduces its 2-d grid cells and NRAG
    edges for the same pooling (LLM-MRI pools the first token: scan with ``pool="first"``).
    Explicit ``scale``/``binning``/``signs`` override the preset.

    >>> rm = llmri.regions(scan, reducer="pca", grid=10)        # doctest: +SKIP
    >>> rm.cells(6)[:3]                                          # doctest: +SKIP
    array([[7, 2], [6, 2], [1, 8]])
    """
    if preset is not None and preset not in PRESETS:
        raise LlmriError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    chosen_preset = PRESETS.get(preset, {})
    scale = chosen_preset.get("scale", False) if scale is None else bool(scale)
    binning = chosen_preset.get("binning", "floor") if binning is None else binning
    signs = chosen_preset.get("signs", "align") if signs is None else signs
    if signs not in SIGNS:
        raise LlmriError(f"signs {signs!r} is not one of {', '.join(SIGNS)}")
    if binning not in BINNINGS:
        raise LlmriError(f"binning {binning!r} is not one of {', '.join(BINNINGS)}")
    if not isinstance(n_components, int) or n_components < 1:
        raise LlmriError(f"n_components must be a positive integer, got {n_components!r}")
    if not isinstance(grid, int) or grid < 1:
        raise LlmriError(f"grid must be a positive integer, got {grid!r}")
    available = scan.layers(site)
    if not available:
        raise LlmriError(f"site {site!r} was not captured; this scan has {scan.site_kinds}")
    chosen = available if layers is None else [L + (scan.n_layers + 1 if site == "resid" else scan.n_layers)
                                                if L < 0 else L for L in layers]
    for L in chosen:
        if L not in available:
            raise LlmriError(f"layer {L} of site {site!r} was not captured; layers available: {available}")
    name = reducer if isinstance(reducer, str) else type(reducer).__name__
    make_reducer(reducer, n_components, seed)  # validate before the long loop
    coords, cells, edges, variance, components = {}, {}, {}, {}, {}
    previous = None
    for L in tqdm(chosen, desc=f"regions ({name})", unit="layer", disable=None if progress is None else not progress):
        X = scan.activations(L, site)
        k = min(n_components, X.shape[1], X.shape[0])
        if k < n_components:
            raise LlmriError(f"n_components={n_components} is more than layer {L} allows "
                             f"({X.shape[0]} documents x {X.shape[1]} dims)")
        # float rounding of a constant layer is not a spread: below this size an axis is constant
        size = float(np.abs(X).max(initial=0.0))
        atol = np.inf if float(np.ptp(X, axis=0).max(initial=0.0)) <= 1e-6 * size else 1e-6 * size * np.sqrt(X.shape[1])
        if np.isinf(atol):  # every document the same: one point, nothing to fit
            Z, red = np.zeros((X.shape[0], n_components)), None
            variance[L] = np.zeros(n_components)
        else:
            red = make_reducer(reducer, n_components, seed)
            Z = np.asarray(red.fit_transform(standardize(X) if scale else X), dtype=np.float64)
        if Z.shape != (X.shape[0], n_components):
            raise LlmriError(f"reducer {name} returned shape {Z.shape}, expected {(X.shape[0], n_components)}")
        flip = orient(Z, signs, coords.get(previous) if previous is not None else None)
        Z = Z * flip
        coords[L], previous = Z, L
        cells[L], edges[L] = grid_cells(Z, grid, binning, atol)
        if hasattr(red, "explained_variance_ratio_"):
            variance[L] = np.asarray(red.explained_variance_ratio_)
        if hasattr(red, "components_"):
            components[L] = np.asarray(red.components_) * flip[:, None]
    return RegionMap(list(chosen), n_components, grid, name, seed, site, scan.labels.copy(),
                     scan.label_names, scan.texts, coords, cells, edges, variance, components,
                     scale, binning, preset)


def standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per column (population std; a constant column becomes 0),
    as scikit-learn's ``StandardScaler``.

    >>> standardize(np.array([[1.0, 5.0], [3.0, 5.0]])).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(X)

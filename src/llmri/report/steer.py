"""The steering pages: ``steer.html`` (and ``steer.json``) of a steering sweep
(``llmri.steer_sweep``), as ``llmri steer`` writes it, and ``steer.html`` of generations with one
SAE feature clamped (``llmri.clamp``), as ``llmri sae steer`` writes it.

>>> df = llmri.steer_sweep(model, scan, "space", "food", 3, [-4, 0, 4], ["The news today:"])
>>> steer_page(df, "runs/steer", model.name, "runs/news", alphas=[-4, 0, 4], max_new_tokens=40)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store import atomic_write_json, json_safe
from ..viz import steer_figure, steer_plot
from .page import build_page, output_folder, whole_page


def steer_grid(sweep: pd.DataFrame) -> pd.DataFrame:
    """Prompts by rows, alphas by columns; each cell the generation and its probe probability."""
    grid = sweep.assign(cell=[f"{g} [P={p:.2f}]" for g, p in zip(sweep["generation"], sweep["p_positive"])])
    table = grid.pivot(index="prompt", columns="alpha", values="cell").reset_index()
    table.columns = ["prompt"] + [f"alpha {a:g}" for a in table.columns[1:]]
    return table


@whole_page
def steer_page(sweep: pd.DataFrame, out, model_name: str, scan, alphas, max_new_tokens: int = 40,
               seed: int = 0) -> Path:
    """Write ``out/steer.json`` (the settings and every row) and ``out/steer.html``: the probe
    probability against alpha (PNG/SVG beside it), the generations as a prompts-by-alphas grid and
    every generation with its probability (also CSVs). ``sweep`` is what
    :func:`llmri.steer_sweep` returns (its ``attrs`` name the vector, site, mode and probe layer);
    ``scan`` (the Scan's folder as it should be shown), ``alphas``, ``max_new_tokens`` and ``seed``
    are the settings it was run with. Returns the page's path.
    """
    out = output_folder(out)
    scan = str(getattr(scan, "folder", scan))
    a = sweep.attrs
    atomic_write_json(out / "steer.json", json_safe({   # p_positive is NaN (null) for an empty generation
        "settings": {**a, "model": model_name, "scan": scan, "alphas": list(alphas), "max_new_tokens": max_new_tokens,
                     "seed": seed},
        "rows": sweep.to_dict(orient="records")}))
    return build_page(out, "steer", f"llmri steering: {model_name}",
                      [f"Vector: mean of {a['positive']} minus mean of {a['negative']} in {scan}, "
                       f"{a['mode']} at {a['site']} (norm {a['vector_norm']:.4g}).",
                       f"Each generation is read back unsteered and scored by a logistic-regression probe trained "
                       f"on the scan's layer {a['probe_layer']}: P({a['positive']}). Greedy decoding, "
                       f"{max_new_tokens} new tokens."],
                      [(steer_figure(sweep), steer_plot(sweep), "steer")],
                      [("Generations (prompts by rows, alphas by columns)", steer_grid(sweep), "steer_grid"),
                       ("Every generation with its probe probability", sweep, "steer")])


def clamp_page(generations, out, sae, feature: int, prompt: str, max_new_tokens: int = 40) -> Path:
    """Write ``out/steer.html``: the generations from ``prompt`` with SAE feature ``feature`` of
    ``sae`` clamped, one row each (also ``steer.csv``). ``generations`` holds (clamp label,
    generation) pairs, or is a DataFrame with columns ``clamp`` and ``generation``. Returns its path.

    >>> rows = [("none (original)", llmri.generate(model, prompt))]
    >>> with llmri.clamp(model, sae, {7: "10x"}) as c:                   # doctest: +SKIP
    ...     rows.append((f"10x = {c.values[0]:.4g}", llmri.generate(model, prompt)))
    >>> clamp_page(rows, "runs/steer-7", sae, 7, prompt)                  # doctest: +SKIP
    """
    table = generations if isinstance(generations, pd.DataFrame) else \
        pd.DataFrame(list(generations), columns=["clamp", "generation"])
    return build_page(out, "steer", f"llmri steer: feature {feature} of {sae.site}",
                      [f"prompt: {prompt}", f"{sae!r}; greedy decoding, {max_new_tokens} new tokens"], [],
                      [("Generations", table, "steer")])

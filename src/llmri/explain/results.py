"""Reading and writing explain runs: the table and records of :func:`llmri.explain`, found beside
the Scan or SAE they explain. Neuron cards, feature dashboards, circuits and the report read runs
through this module, without the explainer engine.

>>> res = ExplainResult.load("runs/explain")                           # doctest: +SKIP
>>> unit_explanations(res, "mlp.10", "neuron")[12]["explanation"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LlmriError
from ..store import atomic_write_json, atomic_write_text, check_out_folder, json_safe, whole_folder


@dataclass
class ExplainResult:
    """``table``: one row per unit (unit, explanation, scores, baselines, counts, tokens, cost);
    ``records``: the same plus each unit's windows with true and simulated activations."""

    table: object
    records: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @classmethod
    def load(cls, out) -> "ExplainResult":
        """Read what :meth:`save` wrote (for neuron cards, feature dashboards and notebooks).

        >>> res = llmri.ExplainResult.load("runs/explain")                     # doctest: +SKIP
        >>> res.table.set_index("unit").loc[12, "explanation"]
        """
        import pandas as pd

        out = Path(out)
        if not (out / "explanations.csv").is_file():
            raise LlmriError(f"{out}: no explanations.csv; run llmri explain with --out {out}")
        try:
            records = [json.loads(x) for x in (out / "explanations.jsonl").read_text(encoding="utf-8").splitlines() if x]
            info = json.loads((out / "explain.json").read_text(encoding="utf-8"))
            table = pd.read_csv(out / "explanations.csv", keep_default_na=True)
        except (OSError, ValueError) as e:
            raise LlmriError(f"{out}: not a whole explain run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             "rerun llmri explain with the same --out (its calls are cached)") from None
        units = [int(u) for u in info.get("units", [])] if isinstance(info, dict) else None
        if units is None or "unit" not in table or [int(u) for u in table["unit"]] != units \
                or [int(r.get("unit", -1)) for r in records] != units:
            raise LlmriError(f"{out}: explanations.csv, explanations.jsonl and explain.json disagree on the units; "
                             "rerun llmri explain with the same --out (its calls are cached)")
        return cls(table, records, info)

    def save(self, out) -> Path:
        """Write ``explanations.csv``, ``explanations.json`` (table), ``explanations.jsonl``
        (records) and ``explain.json`` (run settings) into ``out``, all four or none
        (:func:`llmri.store.whole_folder`; the call cache and the page beside them stay). A missing
        score is null in the JSON files."""
        out = check_out_folder(out)
        with whole_folder(out) as tmp:
            atomic_write_text(tmp / "explanations.csv", self.table.to_csv(index=False))
            atomic_write_text(tmp / "explanations.json", self.table.to_json(orient="records", indent=1))
            atomic_write_text(tmp / "explanations.jsonl", "".join(
                json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n" for r in self.records))
            atomic_write_json(tmp / "explain.json", json_safe(self.info))
        return out


def unit_explanations(explanations, site: str, unit_kind: str) -> dict[int, dict]:
    """``{unit: row}`` (explanation, scores, baselines) of explain runs for the neurons
    (``unit_kind="neuron"``) or SAE features (``"feature"``) of ``site``, for neuron cards and
    feature dashboards. ``explanations``: an :class:`ExplainResult`, an explain output folder, or
    a list of them (a later run wins for a unit both explain). A run of another site or kind is a
    one-line error naming its folder.

    >>> unit_explanations("runs/explain", "mlp.10", "neuron")[12]["simulation_score"]  # doctest: +SKIP
    """
    runs = explanations if isinstance(explanations, (list, tuple)) else [explanations]
    out: dict[int, dict] = {}
    for run in runs:
        res = run if isinstance(run, ExplainResult) else ExplainResult.load(run)
        where = "the explain run" if isinstance(run, ExplainResult) else str(run)
        got = (res.info.get("site"), res.info.get("unit_kind", "neuron"))
        if got != (site, unit_kind):
            raise LlmriError(f"{where}: explains the {got[1]}s of {got[0]}, not the {unit_kind}s of {site}")
        for row in res.table.to_dict("records"):
            if row.get("status", "ok") == "ok":
                out[int(row["unit"])] = json_safe(row)
    return out


def find_explanations(folder, site: str, unit_kind: str) -> list[Path]:
    """Explain runs beside ``folder`` (a Scan for neurons, an SAE for features): the sibling
    folders whose ``explain.json`` names that folder (``scan``, or ``sae`` for features), ``site``
    and ``unit_kind``, oldest first. This is how ``llmri report`` and ``llmri sae report`` find
    explanations when none are given."""
    folder = Path(folder).resolve()
    key = "sae" if unit_kind == "feature" else "scan"
    found = []
    for info_file in sorted(folder.parent.glob("*/explain.json")):
        if info_file.parent.name.startswith("."):     # a write in progress or killed (store.whole_folder)
            continue
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (info.get(key) and Path(info[key]).resolve() == folder and info.get("site") == site
                and info.get("unit_kind", "neuron") == unit_kind and (info_file.parent / "explanations.csv").is_file()):
            found.append((info_file.stat().st_mtime_ns, info_file.parent))
    return [f for _, f in sorted(found)]

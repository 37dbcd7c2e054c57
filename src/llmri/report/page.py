"""The page plumbing every report page shares: the output folder, figures written as PNG/SVG
beside the page and inlined as plotly, tables as HTML and CSV, and :func:`build_page`, the
one-topic page in the report's format.

>>> build_page("runs/probe", "probe", "llmri probe", ["one line of context"],
...            [(probe_figure(df), probe_plot(df), "probe")], [("Probe per layer", df, "probe")])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..store import atomic_write_bytes, atomic_write_text, check_out_folder, whole_folder
from ..viz import save_figure, script_json


class _Figures:
    """Collects interactive figures for the page and writes static copies to ``figures/``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def interactive(self, fig) -> Markup:
        import plotly.io as pio

        self.count += 1
        fid = f"figure-{self.count}"
        payload = script_json(pio.to_json(fig, validate=False), serialized=True)
        return Markup(f'<div class="figure" id="{fid}"></div>\n<script>(function(){{var f={payload};'
                      f'Plotly.newPlot("{fid}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')

    def static(self, fig, name: str) -> list[str]:
        import matplotlib.pyplot as plt

        paths = [save_figure(fig, self.folder / f"{name}.{ext}").name for ext in ("png", "svg")]
        plt.close(fig)
        return paths


def _slug(name: str) -> str:
    """A file-name-safe form of a category name: ``"Outer space!"`` -> ``"outer_space"``."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "category"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def output_folder(out) -> Path:
    """The folder a page goes to, checked (call it before a model loads to fail early); static
    figures are drawn off-screen from here on."""
    import matplotlib

    matplotlib.use("Agg")
    return check_out_folder(out, advice=None)


def whole_page(builder):
    """A page builder whose folder is written whole (:func:`llmri.store.whole_folder`): it writes
    into a hidden sibling of ``out`` that takes ``out``'s place when the page is done, so a failed
    or killed build leaves the folder as it was; the path returned is the one in ``out``."""
    sig = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        out = output_folder(bound.arguments["out"])
        with whole_folder(out) as tmp:
            bound.arguments["out"] = tmp
            path = Path(builder(*bound.args, **bound.kwargs))
        return out / path.relative_to(tmp) if tmp in path.parents else path
    return build


def _table(df: pd.DataFrame) -> Markup:
    return Markup(df.to_html(index=False, escape=True, border=0, classes="table",
                             float_format=lambda v: f"{v:.4g}"))


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("llmri", "report"), autoescape=select_autoescape(["html", "j2"]))


@whole_page
def build_page(out, name: str, title: str, intro: list[str], figures: list[tuple], tables: list[tuple],
               html_blocks: list[tuple[str, str]] = (), files: list[str] = ()) -> Path:
    """A one-topic HTML page in the report's format: ``out/{name}.html``, static figures and CSVs.

    ``figures`` holds (plotly figure, matplotlib figure, file stem); ``tables`` holds
    (heading, DataFrame, CSV file stem); ``html_blocks`` holds (heading, trusted HTML fragment)
    shown after the tables; ``files`` names more files the caller wrote beside the page (listed
    at its foot).
    """
    import plotly.offline

    out = output_folder(out)
    figs = _Figures(out)
    blocks, files = [], list(files)
    for interactive, static, stem in figures:
        blocks.append(figs.interactive(interactive))
        files += figs.static(static, stem)
    for _, df, stem in tables:
        atomic_write_text(out / f"{_safe(stem)}.csv", df.to_csv(index=False))
        files.append(f"{_safe(stem)}.csv")
    page = _environment().get_template("page.html.j2").render(
        plotly_js=Markup(plotly.offline.get_plotlyjs()), title=title, intro=intro, figures=blocks,
        tables=[(h, _table(df)) for h, df, _ in tables], files=files,
        html_blocks=[(h, Markup(b)) for h, b in html_blocks])
    path = out / f"{name}.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path

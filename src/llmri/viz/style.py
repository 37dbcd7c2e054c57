"""Shared figure style: category colours, text snippets for hovers, and saving figures to disk."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np

from ..errors import LlmriError
from ..store import atomic_write_bytes

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22"]


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """Rows and columns of a small-multiples grid for ``n`` panels."""
    cols = min(n, max_cols)
    return -(-n // cols), cols


def category_colors(names) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def hex_to_rgb(color: str) -> np.ndarray:
    c = color.lstrip("#")
    return np.array([int(c[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0


def blend(colors: dict[str, str], shares: dict[str, float]) -> str:
    """The colour mix of categories weighted by their share (grey when nothing is there)."""
    total = sum(abs(v) for v in shares.values())
    if total <= 0:
        return "#bbbbbb"
    rgb = sum(hex_to_rgb(colors[k]) * abs(v) / total for k, v in shares.items())
    return "#" + "".join(f"{int(round(x * 255)):02x}" for x in np.clip(rgb, 0, 1))


def snippet(text: str, words: int = 8) -> str:
    """The first words of a document, HTML-escaped for hover labels."""
    parts = text.split()
    short = " ".join(parts[:words]) + (" ..." if len(parts) > words else "")
    return html.escape(short, quote=True)


def script_json(obj, serialized: bool = False) -> str:
    """JSON of ``obj`` (or already ``serialized`` JSON text) made safe inside a <script> element:
    no '<', '>' or '&' survives literally."""
    text = obj if serialized else json.dumps(obj)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure (.png, .svg, .pdf) or a plotly figure (.html) atomically."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if hasattr(fig, "savefig"):
        if fmt not in ("png", "svg", "pdf"):
            raise LlmriError(f"{path}: a static figure is saved as .png, .svg or .pdf")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())
    elif hasattr(fig, "to_html"):
        if fmt != "html":
            raise LlmriError(f"{path}: an interactive figure is saved as .html")
        atomic_write_bytes(path, fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8"))
    else:
        raise LlmriError(f"save_figure: not a matplotlib or plotly figure ({type(fig).__name__})")
    return path

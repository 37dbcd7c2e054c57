"""The attention page: ``attention.html`` for one text (head view, rollout, flow) and the parts of
it that the main report reuses for its example text.

>>> build_attention_page(llmri.attention(model, "the cat sat"), "runs/attention", model_name=model.name)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from ..store import atomic_write_bytes
from ..viz import attention_layer_plot, head_view_html, rollout_plot, token_highlight_html
from .page import _environment, _Figures, output_folder, whole_page


def _attention_parts(att, figs: _Figures, target=None, prefix: str = "") -> dict:
    """Head view, rollout and flow over the text, and static figures of one text's attention.
    ``target``: what rollout and flow explain (default: what fits the model's pooling)."""
    static = figs.static(rollout_plot(att, target), f"{prefix}rollout")
    for L in range(att.n_layers):
        static += figs.static(attention_layer_plot(att, L), f"{prefix}heads_layer{L}")
    return {"head_view": Markup(head_view_html(att)), "target": att.target_label(target),
            "rollout": Markup(token_highlight_html(att.tokens, att.contributions(target))),
            "flow": Markup(token_highlight_html(att.tokens, att.flow(target), color="31,119,180")),
            "static": static}


@whole_page
def build_attention_page(att, out, target=None, model_name: str = "") -> Path:
    """Write ``out/attention.html`` (head view, rollout, flow) and PNG/SVG figures of one text.
    ``target``: a position or a pooling (``"mean"``, ``"mean-nosink"``, ``"first"``, ``"last"``)
    whose inputs rollout and flow explain; default: the one that fits the model's pooling."""
    out = output_folder(out)
    figs = _Figures(out)
    parts = _attention_parts(att, figs, target)
    page = _environment().get_template("attention.html.j2").render(
        title=f"llmri attention: {model_name}", text=att.text, n_tokens=len(att.tokens),
        n_layers=att.n_layers, n_heads=att.n_heads, **parts)
    path = out / "attention.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path

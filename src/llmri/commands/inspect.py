"""``llmri attention``, ``llmri neurons`` and ``llmri probe``: reading a model's attention, and the
neurons and layers of a Scan that carry its categories."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from ..sites import POOLS
from .options import _default_out, _dtype_option, _ints


@click.command("attention")
@click.argument("text")
@click.option("--model", "model_name", default="default", show_default=True, help="Hugging Face id or local folder.")
@click.option("--out", required=True, help="Folder for attention.html and the PNG/SVG figures.")
@click.option("--target", default=None,
              help="What rollout and flow explain: a token position (0, -1, ...) or mean, mean-nosink, first, "
                   "last (default: what fits the model's pooling: mean for encoders, mean-nosink for decoders).")
@click.option("--device", default="auto", show_default=True)
@_dtype_option
@click.option("--download", is_flag=True, help="Allow fetching the model from the Hugging Face hub.")
def attention_cmd(text, model_name, out, target, device, dtype, download):
    """Attention of one TEXT: every head, an interactive head view, rollout and flow."""
    from ..attention import attention
    from ..model import load_model
    from ..report import build_attention_page, output_folder

    if not text.strip():
        raise LlmriError("TEXT: give a non-empty text")
    output_folder(out)  # checked before the model loads
    if target is not None:
        try:
            target = int(target)
        except ValueError:
            if target not in POOLS:
                raise LlmriError(f"--target {target!r} is not a token position or one of {', '.join(POOLS)}")
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    att = attention(model, text)
    roll = att.contributions(target)
    path = build_attention_page(att, out, target=target, model_name=model.name)
    top = sorted(range(len(att.tokens)), key=lambda k: -roll[k])[:5]
    click.echo(f"{len(att.tokens)} tokens, {att.n_layers} layers x {att.n_heads} heads; "
               f"largest rollout to {att.target_label(target)}: "
               + ", ".join(f"{att.tokens[k]} {roll[k]:.3f}" for k in top))
    click.echo(f"attention: {path}")


@click.command("neurons")
@click.argument("scan_dir")
@click.option("--category", default=None, help="One category (default: every category).")
@click.option("--top", type=int, default=10, show_default=True, help="Neurons to list per category.")
@click.option("--site", default="mlp", show_default=True, help="mlp, or resid for residual dimensions.")
@click.option("--csv", "csv_out", default=None, help="Also write the full ranking to this CSV file.")
def neurons_cmd(scan_dir, category, top, site, csv_out):
    """Rank the neurons of the Scan in SCAN_DIR by how selectively they respond to each category."""
    import pandas as pd

    from ..neurons import neurons
    from ..store import Scan, atomic_write_text

    if top < 1:
        raise LlmriError(f"--top must be >= 1, got {top}")
    scan = Scan.open(scan_dir)
    cats = [category] if category else scan.label_names
    frames = []
    for c in cats:
        df = neurons(scan, c, site=site)
        df.insert(0, "category", c)
        frames.append(df)
        click.echo(f"\n{c}: top {top} of {len(df)} {site} neurons")
        click.echo(df.head(top)[["layer", "neuron", "effect_size", "p_value", "q_value",
                                 "mean_category", "mean_rest"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if csv_out:
        atomic_write_text(csv_out, pd.concat(frames, ignore_index=True).to_csv(index=False))
        click.echo(f"\nranking: {csv_out}")


@click.command("probe")
@click.argument("scan_dir")
@click.option("--site", default="resid", show_default=True, help="Which captured site to probe.")
@click.option("--cv", type=int, default=5, show_default=True, help="Cross-validation folds.")
@click.option("--control/--no-control", default=True, show_default=True, help="Also run the control task.")
@click.option("--classifier", type=click.Choice(["logistic", "mlp"]), default="logistic", show_default=True)
@click.option("--top-k", default="1,5,10,50", show_default=True,
              help="Neuron counts for the top-k probe at the best layer.")
@click.option("--out", default=None, help="Folder for probe.html, figures and tables (default: SCAN_DIR-probe).")
@click.option("--seed", type=int, default=0, show_default=True)
def probe_cmd(scan_dir, site, cv, control, classifier, top_k, out, seed):
    """Probe every layer of the Scan in SCAN_DIR for its categories."""
    from ..probe import probe, probe_neurons
    from ..report import probe_page
    from ..store import Scan

    ks = _ints(top_k, "--top-k")
    if not ks:
        raise LlmriError(f"--top-k {top_k!r}: no count given, e.g. 1,5,10")
    scan = Scan.open(scan_dir)
    df = probe(scan, site=site, cv=cv, control=control, model=classifier, seed=seed)
    best = int(df.loc[df["accuracy"].idxmax(), "layer"])
    dim = scan.activations(best, site).shape[1]
    ranking, curve = probe_neurons(scan, best, site=site, top_k=[k for k in ks if k <= dim] or [dim], cv=cv, seed=seed)
    click.echo(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nbest layer {best}: accuracy with only the top-k neurons (ranked by probe weight)")
    click.echo(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out = Path(out) if out else _default_out(scan_dir, "probe")
    path = probe_page(scan, df, out, best, ranking, curve, site=site, cv=cv, classifier=classifier)
    click.echo(f"\nprobe: {path}")

"""``llmri circuit``: the attribution graph of a model's answer over SAE features or transcoders."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from .options import _check_out, _dtype_option, _ints


@click.command("circuit")
@click.argument("prompt")
@click.option("--model", "model_name", default="default-decoder", show_default=True)
@click.option("--saes", default=None, help="Folder of residual-stream SAE folders (llmri sae train --sites ...) "
              "or of transcoder folders (--sites mlp_in.L,... --target-site mlp_out.L,...), or a feature set "
              "shipped with llmri by model name; default: the set shipped for --model (default-decoder).")
@click.option("--target", default=None, help="Target token, e.g. ' Paris' (default: the model's top token).")
@click.option("--contrast", default=None, help="Second token: the metric becomes logit(target) - logit(contrast).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--out", required=True, help="Folder for circuit.html, graph.json (with graph-metadata.json: a data "
              "folder circuit-tracer's local server serves as it is), CSVs and figures.")
@click.option("--viewer", "viewer_dir", default=None, help="Also add the graph to this data folder of circuit-tracer's "
              "viewer (SLUG.json and its entry in graph-metadata.json, beside the graphs already there).")
@click.option("--slug", default=None, help="The graph's name in --viewer (default: made of the prompt and target).")
@click.option("--max-nodes", type=int, default=200, show_default=True, help="Features given edges (by |attribution|).")
@click.option("--node-threshold", type=float, default=0.8, show_default=True)
@click.option("--edge-threshold", type=float, default=0.98, show_default=True)
@click.option("--freeze", is_flag=True, help="Freeze attention patterns and norm scales (Ameisen et al. 2025).")
@click.option("--k", "k_spec", default="5,10,20", show_default=True, help="Top-k sizes for validation.")
@click.option("--ablation", type=click.Choice(["zero", "mean"]), default="zero", show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the ablation checks.")
@click.option("--explanations", multiple=True, help="An llmri explain --sae output folder (or its explain.json) "
              "of one of the SAEs (repeatable); default: the explain runs found beside each SAE folder.")
@click.option("--scan", "scan_dir", default=None, help="A scan with token records of the SAE sites: clicking a "
              "feature node then opens its dashboard (top activating windows, density, output tokens).")
@click.option("--device", default="auto", show_default=True)
@_dtype_option
@click.option("--download", is_flag=True)
def circuit_cmd(prompt, model_name, saes, target, contrast, chat, out, max_nodes, node_threshold, edge_threshold,
                freeze, k_spec, ablation, no_validate, explanations, scan_dir, device, dtype, download, viewer_dir, slug):
    """Attribution graph of the model's answer to PROMPT over SAE features: which features, at
    which layers and positions, move it toward --target, and how they feed each other."""
    from ..circuits import attribute, feature_explanations, load_saes, validate_circuit
    from ..circuits.export import check_slug, read_index
    from ..model import load_model
    from ..report import build_circuit_page

    if not prompt.strip():
        raise LlmriError("PROMPT: give a non-empty prompt")
    if contrast is not None and target is None:
        raise LlmriError("--contrast needs --target")
    for flag, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise LlmriError(f"{flag} must be in (0, 1], got {v}")
    if max_nodes < 1:
        raise LlmriError(f"--max-nodes must be >= 1, got {max_nodes}")
    ks = _ints(k_spec, "--k")
    if not ks or min(ks) < 1:
        raise LlmriError(f"--k: give positive integers, got {k_spec!r}")
    _check_out(out, "choose another --out")
    if slug is not None and viewer_dir is None:
        raise LlmriError("--slug names the graph in --viewer; give --viewer DIR too")
    if viewer_dir is not None:
        _check_out(viewer_dir, "choose another --viewer")
        read_index(viewer_dir)
        if slug is not None:
            check_slug(slug)
    if saes is None:
        from ..sae.collection import shipped_sets

        if model_name not in shipped_sets():
            raise LlmriError(f"--saes: no feature set ships for --model {model_name!r}; give a folder of SAE folders")
        saes = model_name
    sae_list = load_saes(saes)
    explanations = list(explanations) or None
    feature_explanations(sae_list, explanations)  # checked before the model loads
    scan = None
    if scan_dir is not None:
        from ..store import Scan

        scan = Scan.open(scan_dir)
        missing = [s.site for s in sae_list if s.site not in scan.token_sites]
        if missing:
            raise LlmriError(f"--scan {scan_dir}: no token records of {missing[0]} (scan with --token-sites "
                             f"{','.join(s.site for s in sae_list)})")
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    g = attribute(model, sae_list, prompt, target=(target, contrast) if contrast else target, chat=chat,
                  max_feature_nodes=max_nodes, freeze=freeze, explanations=explanations)
    if not no_validate:
        validate_circuit(model, sae_list, g, k=ks, mode=ablation)
    pruned = g.prune(node_threshold, edge_threshold)
    path = build_circuit_page(g, out, pruned=pruned, model=model, saes=sae_list, scan=scan)
    click.echo(f"{g!r}")
    click.echo(g.top_features(10).to_string(index=False, max_colwidth=50, columns=[
        "site", "position", "token", "feature", "activation", "attribution"]
        + (["explanation", "simulation_score"] if g.info["explained"] else [])))
    if g.validation:
        v = g.validation
        click.echo(f"validation: Spearman {v['single']['spearman']:.3f} over {v['single']['n']} single ablations; "
                   + "; ".join(f"top-{r['k']} drop {r['top_drop']:.3g} vs random {r['random_drop_mean']:.3g}"
                               for r in v["topk"]))
    click.echo(f"circuit: {path}  graph: {Path(out) / 'graph.json'}")
    if viewer_dir is not None:
        click.echo(f"viewer: {pruned.to_viewer(viewer_dir, slug)}")

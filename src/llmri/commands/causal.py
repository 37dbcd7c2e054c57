"""``llmri ablate`` and ``llmri patch``: what breaks when a part of the model is removed (a lesion
map), and what comes back when one site is restored from a clean run (activation patching)."""

from __future__ import annotations

import click

from ..errors import LlmriError
from .options import _check_ray, _dtype_option, _ints, _model_loader, _ray_options, _specs


@click.command("ablate")
@click.argument("corpus")
@click.option("--model", "model_name", default="default", show_default=True)
@click.option("--out", required=True, help="Folder for lesion.html, figures and tables.")
@click.option("--measure", type=click.Choice(["auto", "loss", "representation", "probe"]), default="auto",
              show_default=True, help="auto: the model's loss when it has one, else representation change.")
@click.option("--mode", type=click.Choice(["zero", "mean", "resample"]), default="zero", show_default=True)
@click.option("--scan", "scan_dir", default=None, help="Scan with attn_z and mlp_out sites, for mean/resample.")
@click.option("--layers", default=None, help="Comma-separated layers (default: all).")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--device", default="auto", show_default=True)
@_dtype_option
@click.option("--download", is_flag=True)
@_ray_options
def ablate_cmd(corpus, model_name, out, measure, mode, scan_dir, layers, text_column, label_column, device, dtype,
               download, ray_mode, workers, gpus_per_worker):
    """Lesion map: ablate every attention head and every MLP in turn over CORPUS."""
    from ..corpus import Corpus
    from ..interventions import lesion_map
    from ..interventions.lesion import check_layers
    from ..model import config_n_layers, load_model, model_folder
    from ..report import largest_effects, lesion_page, output_folder
    from ..store import Scan

    engine = _check_ray(ray_mode, workers, gpus_per_worker)
    output_folder(out)  # checked before the model loads
    layers = _ints(layers, "--layers") if layers is not None else None
    if layers is not None and not layers:
        raise LlmriError(f"--layers {layers!r}: no layer given, e.g. 0,3")
    folder = model_folder(model_name)
    n_layers = config_n_layers(folder) if folder is not None else None
    if layers is not None and n_layers is not None:   # checked before the model loads, from its config
        check_layers(layers, n_layers)
    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    scan = Scan.open(scan_dir) if scan_dir else None
    if engine is None:
        model = load_model(model_name, device=device, dtype=dtype, download=download)
        model_name = model.name
    else:  # each Ray worker loads its own copy
        model = _model_loader(model_name, device, download, dtype)
    df = lesion_map(model, docs, measure=measure, mode=mode, scan=scan, layers=layers, progress=None,
                    engine=engine or "local")
    click.echo(f"{df.attrs['measure']}: baseline {df.attrs['baseline']:.4g}; largest effects:")
    click.echo(largest_effects(df).head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    path = lesion_page(df, out, model_name, n_docs=len(docs), mode=mode)
    click.echo(f"lesion map: {path}")


@click.command("patch")
@click.option("--model", "model_name", default="default", show_default=True)
@click.option("--clean", required=True, help="The clean input text.")
@click.option("--corrupted", required=True, help="The corrupted input (same number of tokens).")
@click.option("--out", required=True, help="Folder for patch.html, figures and tables.")
@click.option("--sites", default="resid,attn_out,mlp_out", show_default=True)
@click.option("--device", default="auto", show_default=True)
@_dtype_option
@click.option("--download", is_flag=True)
def patch_cmd(model_name, clean, corrupted, out, sites, device, dtype, download):
    """Activation patching (causal tracing) from a clean into a corrupted run."""
    from ..interventions import patch
    from ..model import load_model
    from ..report import output_folder, patch_page, patch_ranking
    from ..sites import parse_site

    for flag, text in (("--clean", clean), ("--corrupted", corrupted)):
        if not text.strip():
            raise LlmriError(f"{flag}: give a non-empty text")
    specs = _specs(sites)
    if not specs:
        raise LlmriError(f"--sites {sites!r}: no site given, e.g. resid,attn_out,mlp_out")
    for spec in specs:
        parse_site(spec)
    output_folder(out)  # checked before the model loads
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    res = patch(model, clean, corrupted, sites=specs, progress=None)
    click.echo(f"metric: clean {res.clean_metric:.4g}, corrupted {res.corrupted_metric:.4g}")
    ranked, why = patch_ranking(res)
    click.echo(ranked.head(5).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if why:
        click.echo(f"({why})")
    path = patch_page(res, out, clean, corrupted, model_name=model.name, sites=specs)
    click.echo(f"patching: {path}")

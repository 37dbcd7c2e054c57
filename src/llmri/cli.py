"""The ``llmri`` command: ``llmri scan``, ``llmri demo``.

Errors are one line on stderr with exit status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import LlmriError
from .sites import POOLS

_DEBUG = False


def _echo_err(msg: str) -> None:
    click.echo(f"llmri: error: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """llmri: an MRI scanner for transformer language models."""
    global _DEBUG
    _DEBUG = debug


def _ints(value: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LlmriError(f"{flag} {value!r}: expected comma-separated integers, e.g. 0,3,-1") from None


def _summary(scan) -> str:
    plan = scan.manifest["plan"]
    lines = [f"scan: {scan.folder}",
             f"  model   {scan.model_name} ({scan.n_layers} blocks)",
             f"  corpus  {scan.n_docs} documents, labels: {', '.join(scan.label_names)}",
             f"  sites   {', '.join(scan.site_kinds)}; pool {scan.settings['pool']}; "
             f"{plan['n_tokens']} tokens in {plan['n_batches']} batches"]
    if plan["truncated"]:
        lines.append(f"  {plan['truncated']} documents truncated to {scan.settings['max_length']} tokens")
    return "\n".join(lines)


def _scan_option_list(sites: str, token_sites: str):
    return [
    click.option("--model", "model_name", default="default", show_default=True,
                 help="Hugging Face id, local folder or .gguf file; 'default' is the embedded all-MiniLM-L6-v2, "
                      "'default-decoder' the embedded SmolLM2-135M-Instruct."),
    click.option("--pool", type=click.Choice(["auto", *POOLS]),
                 default="auto", show_default=True,
                 help="How token vectors become one vector per document; auto is mean for encoders and "
                      "mean-nosink (leaving out the attention-sink first token) for decoders."),
    click.option("--sites", default=sites, show_default=True,
                 help="Comma-separated sites: resid, mlp, attn_out, mlp_out, attn (per-head attention "
                      "statistics), or one layer: mlp.3."),
    click.option("--token-sites", default=token_sites, show_default=True,
                 help="Sites to keep for every token, e.g. resid.6."),
    click.option("--layers", default=None, help="Comma-separated layers (negative from the end)."),
    click.option("--batch-tokens", type=int, default=8192, show_default=True,
                 help="Padded tokens per batch."),
    click.option("--max-length", type=int, default=None, help="Truncate documents (default: model limit)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
    click.option("--dtype", default="auto", show_default=True,
                 help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16."),
    click.option("--download", is_flag=True, help="Allow fetching the model from the Hugging Face hub."),
    click.option("--overwrite", is_flag=True, help="Replace a different scan already in --out."),
    ]


def _scan_options(f=None, sites="resid", token_sites=""):
    def wrap(f):
        for opt in reversed(_scan_option_list(sites, token_sites)):
            f = opt(f)
        return f
    return wrap(f) if f is not None else wrap


def _specs(value: str) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def _check_scan_args(model_name, out, sites, token_sites, layers, batch_tokens, max_length, dtype):
    """Everything that can be checked without the model, checked before it loads (in milliseconds).

    Returns the model's folder on disk (``None`` when it must be downloaded) and the layer list.
    """
    from .model import _DTYPES, config_n_layers, model_folder
    from .sites import expand_sites, parse_site

    for spec in _specs(sites) + _specs(token_sites):
        parse_site(spec)
    layer_list = _ints(layers, "--layers") if layers is not None else None
    if batch_tokens < 1:
        raise LlmriError(f"--batch-tokens {batch_tokens}: must be a positive integer")
    if max_length is not None and max_length < 1:
        raise LlmriError(f"--max-length {max_length}: must be a positive integer")
    if dtype != "auto" and dtype not in _DTYPES:
        raise LlmriError(f"--dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
    if Path(out).exists() and not Path(out).is_dir():
        raise LlmriError(f"{out}: exists and is not a folder; choose another output folder")
    folder = model_folder(model_name)
    n_layers = config_n_layers(folder) if folder is not None else None
    if n_layers is not None:  # layer ranges, from config.json
        expand_sites(_specs(sites), n_layers, layer_list)
        expand_sites(_specs(token_sites), n_layers, layer_list)
    return folder, layer_list


def _cached_scan(out, request: str):
    """The finished scan in ``out`` made by the same request, else ``None`` (no model needed)."""
    from .store import Scan, complete_shards, read_manifest

    old = read_manifest(out) if Path(out).is_dir() else None
    if old is None or old.get("request") != request:
        return None
    if len(complete_shards(out, old["plan"]["n_shards"])) < old["plan"]["n_shards"]:
        return None
    return Scan.open(out)


def _scan_request(corpus, model_name, out, pool, sites, token_sites, layers, batch_tokens, max_length, device,
                  dtype, shard_tokens):
    """The checks made before the model loads, and the request key stored in the manifest
    (None when the model is not on disk yet): ``(layer list, request)``."""
    import hashlib
    import json

    from .model import files_fingerprint

    folder, layer_list = _check_scan_args(model_name, out, sites, token_sites, layers, batch_tokens,
                                          max_length, dtype)
    if folder is None:
        return layer_list, None
    options = dict(pool=pool, sites=sites, token_sites=token_sites, layers=layer_list,
                   batch_tokens=batch_tokens, max_length=max_length, device=device, dtype=dtype,
                   shard_tokens=shard_tokens)
    return layer_list, hashlib.sha256(json.dumps(dict(model=files_fingerprint(folder), corpus=corpus.fingerprint,
                                                      options=options), sort_keys=True).encode()).hexdigest()[:20]


def _run_scan(corpus, out, model_name, pool, sites, token_sites, layers, batch_tokens, max_length,
              device, dtype, download, overwrite, shard_tokens=None, need_model=False):
    """Scan ``corpus`` into ``out``; an identical earlier request is answered from disk, model unloaded.

    Returns ``(model or None, scan)``; with ``need_model`` the model is loaded in any case.
    """
    layer_list, request = _scan_request(corpus, model_name, out, pool, sites, token_sites, layers, batch_tokens,
                                        max_length, device, dtype, shard_tokens)
    if request is not None:
        cached = _cached_scan(out, request)
        if cached is not None and not need_model:
            return None, cached
    if not overwrite:  # a different scan in --out, told before the model loads when the corpus or pool says so
        from .store import read_manifest

        old = read_manifest(out) if Path(out).is_dir() else None
        diffs = [] if old is None else (
            (["corpus"] if old.get("corpus", {}).get("fingerprint") != corpus.fingerprint else [])
            + ([f"pool {old['settings'].get('pool')} -> {pool}"]
               if pool != "auto" and old.get("settings", {}).get("pool") != pool else []))
        if diffs:
            raise LlmriError(f"{out}: holds a different scan ({', '.join(diffs)}); "
                             "choose another output folder or pass --overwrite")
    from .capture import scan
    from .model import load_model

    model = load_model(model_name, device=device, dtype=dtype, download=download)
    result = scan(model, corpus, out, sites=_specs(sites), pool=pool, layers=layer_list,
                  max_length=max_length, batch_tokens=batch_tokens, token_sites=_specs(token_sites),
                  shard_tokens=shard_tokens, overwrite=overwrite, progress=None, request=request)
    return model, result


_RAY_OPTIONS = [
    click.option("--ray", "ray_mode", type=click.Choice(["auto", "local"]), default=None,
                 help="Run on Ray (pip install 'llmri[ray]'): auto joins the cluster running on this machine "
                      "(ray start --head), local starts one here. Without it Ray is never imported."),
    click.option("--workers", type=int, default=None, help="Ray workers, each holding one copy of the model [2]."),
    click.option("--gpus-per-worker", type=float, default=None, help="GPUs each Ray worker needs [0]."),
]


def _ray_options(f):
    for opt in reversed(_RAY_OPTIONS):
        f = opt(f)
    return f


def _check_ray(ray_mode, workers, gpus_per_worker) -> dict | None:
    """The Ray options checked before Ray or a model starts; None without --ray."""
    import importlib.util

    from .distributed import check_options

    if ray_mode is None:
        if workers is not None or gpus_per_worker is not None:
            raise LlmriError("--workers and --gpus-per-worker need --ray auto or --ray local")
        return None
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise LlmriError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    workers = 2 if workers is None else workers
    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    check_options(workers, resources, address=ray_mode)
    if importlib.util.find_spec("ray") is None:
        raise LlmriError("--ray: Ray is not installed; pip install 'llmri[ray]'")
    return dict(workers=workers, resources=resources, address=ray_mode)


def _model_loader(model_name, device, download, dtype="auto"):
    """What each Ray worker calls to load its copy of the model (a picklable partial)."""
    from functools import partial

    from .model import load_model

    return partial(load_model, model_name, device=device, dtype=dtype, download=download)


@cli.command("scan")
@click.argument("corpus")
@click.option("--out", required=True, help="Folder for the Scan.")
@click.option("--text-column", default=None, help="Text column of a CSV/TSV/JSONL corpus.")
@click.option("--label-column", default=None, help="Label column of a CSV/TSV/JSONL corpus.")
@_scan_options
@click.option("--shard-tokens", type=int, default=None,
              help="Real tokens per shard, the unit of work of --ray workers (default: 65536 pooled only).")
@_ray_options
def scan_cmd(corpus, out, text_column, label_column, ray_mode, workers, gpus_per_worker, **kw):
    """Scan CORPUS (a folder of label sub-folders, or a CSV/TSV/JSONL file) into --out."""
    from .corpus import Corpus

    ray = _check_ray(ray_mode, workers, gpus_per_worker)
    layers = _ints(kw["layers"], "--layers") if kw["layers"] is not None else None
    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    if ray is None:
        click.echo(_summary(_run_scan(docs, out, **kw)[1]))
        return
    from .distributed import scan

    layers, request = _scan_request(docs, kw["model_name"], out, kw["pool"], kw["sites"], kw["token_sites"],
                                    kw["layers"], kw["batch_tokens"], kw["max_length"], kw["device"], kw["dtype"],
                                    kw["shard_tokens"])
    result = scan(_model_loader(kw["model_name"], kw["device"], kw["download"], kw["dtype"]), docs, out,
                  sites=_specs(kw["sites"]), pool=kw["pool"], layers=layers, max_length=kw["max_length"],
                  batch_tokens=kw["batch_tokens"], token_sites=_specs(kw["token_sites"]),
                  shard_tokens=kw["shard_tokens"], overwrite=kw["overwrite"], progress=None, request=request, **ray)
    click.echo(_summary(result))


_REPORT_OPTIONS = [
    click.option("--reducer", type=click.Choice(["pca", "svd", "umap"]), default="pca", show_default=True,
                 help="How each layer is mapped to a low-dimensional space."),
    click.option("--components", type=int, default=2, show_default=True,
                 help="Map dimensions: 2 gives grid regions, more gives the Spearman (N-d) NRAG."),
    click.option("--grid", type=int, default=10, show_default=True, help="Grid cells per axis."),
    click.option("--categories", default=None, help="Comma-separated categories to show (default: all)."),
    click.option("--permutations", type=int, default=200, show_default=True,
                 help="Label permutations for the category comparison p-values."),
    click.option("--preset", type=click.Choice(["llm-mri"]), default=None,
                 help="Regions and metrics as LLM-MRI 0.2.1 builds them (standardised layers, pandas.cut "
                      "bins, sample estimators); scan with --pool first to match it fully."),
    click.option("--seed", type=int, default=0, show_default=True),
]


def _report_options(f):
    for opt in reversed(_REPORT_OPTIONS):
        f = opt(f)
    return f


def _run_report(scan, out, reducer, components, grid, categories, permutations, seed, preset=None, **extra):
    from .report import build_report

    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    click.echo(f"building the report ({reducer}, {components} components, {grid}x{grid} grid) ...", err=True)
    return build_report(scan, out, reducer=reducer, n_components=components, grid=grid, categories=cats,
                        n_permutations=permutations, seed=seed, progress=None, preset=preset, **extra)


@cli.command("report")
@click.argument("scan_dir")
@click.option("--out", default=None, help="Folder for report.html, figures and tables (default: SCAN_DIR-report).")
@click.option("--explanations", multiple=True, help="An llmri explain output folder of mlp neurons of this scan "
              "(repeatable); default: the explain runs found beside SCAN_DIR.")
@click.option("--sae", "saes", multiple=True,
              help="SAE folder for the Features section (repeat for several; default: SCAN_DIR/saes/*).")
@_report_options
def report_cmd(scan_dir, out, explanations, saes, **kw):
    """Analyse the Scan in SCAN_DIR: regions, NRAGs, metrics, evaluation, one HTML file."""
    from .store import Scan

    for e in explanations:
        if not (Path(e) / "explanations.csv").is_file():
            raise LlmriError(f"--explanations {e}: no explanations.csv there; run llmri explain with --out {e}")
    from .sae.collection import is_sae_folder

    for folder in saes:
        if not is_sae_folder(folder):
            raise LlmriError(f"--sae {folder}: not an SAE folder (no cfg.json)")
    scan = Scan.open(scan_dir)
    out = Path(out) if out else Path(scan_dir).resolve().parent / f"{Path(scan_dir).resolve().name}-report"
    path = _run_report(scan, out, explanations=list(explanations) or None, saes=list(saes) or None, **kw)
    click.echo(f"report: {path}")


@cli.command("demo")
@click.option("--out", default="llmri-demo", show_default=True, help="Folder for the demo's outputs.")
@_scan_options(sites="resid,mlp,attn", token_sites="mlp.-1")
@_report_options
def demo_cmd(out, reducer, components, grid, categories, permutations, seed, preset, **kw):
    """Scan the bundled demo corpus with the embedded default model and write the report."""
    from .corpus import demo_corpus

    corpus = demo_corpus()
    model, result = _run_scan(corpus, Path(out) / "scan", need_model=True, **kw)
    click.echo(_summary(result))
    path = _run_report(result, Path(out) / "report", reducer, components, grid, categories, permutations, seed,
                       preset=preset, model=model, attention_text=corpus.texts[0])
    click.echo(f"report: {path}")


@cli.command("attention")
@click.argument("text")
@click.option("--model", "model_name", default="default", show_default=True, help="Hugging Face id or local folder.")
@click.option("--out", required=True, help="Folder for attention.html and the PNG/SVG figures.")
@click.option("--target", default=None,
              help="What rollout and flow explain: a token position (0, -1, ...) or mean, mean-nosink, first, "
                   "last (default: what fits the model's pooling: mean for encoders, mean-nosink for decoders).")
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True, help="Allow fetching the model from the Hugging Face hub.")
def attention_cmd(text, model_name, out, target, device, download):
    """Attention of one TEXT: every head, an interactive head view, rollout and flow."""
    from .attention import attention
    from .model import load_model
    from .report import build_attention_page

    if target is not None:
        try:
            target = int(target)
        except ValueError:
            if target not in POOLS:
                raise LlmriError(f"--target {target!r} is not a token position or one of {', '.join(POOLS)}")
    model = load_model(model_name, device=device, dtype="float32", download=download)
    att = attention(model, text)
    roll = att.contributions(target)
    path = build_attention_page(att, out, target=target, model_name=model.name)
    top = sorted(range(len(att.tokens)), key=lambda k: -roll[k])[:5]
    click.echo(f"{len(att.tokens)} tokens, {att.n_layers} layers x {att.n_heads} heads; "
               f"largest rollout to {att.target_label(target)}: "
               + ", ".join(f"{att.tokens[k]} {roll[k]:.3f}" for k in top))
    click.echo(f"attention: {path}")


@cli.command("neurons")
@click.argument("scan_dir")
@click.option("--category", default=None, help="One category (default: every category).")
@click.option("--top", type=int, default=10, show_default=True, help="Neurons to list per category.")
@click.option("--site", default="mlp", show_default=True, help="mlp, or resid for residual dimensions.")
@click.option("--csv", "csv_out", default=None, help="Also write the full ranking to this CSV file.")
def neurons_cmd(scan_dir, category, top, site, csv_out):
    """Rank the neurons of the Scan in SCAN_DIR by how selectively they respond to each category."""
    import pandas as pd

    from .neurons import neurons
    from .store import Scan, atomic_write_text

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


@cli.command("probe")
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
    from .probe import probe, probe_neurons
    from .report import build_page
    from .store import Scan
    from .viz import probe_figure, probe_plot

    scan = Scan.open(scan_dir)
    ks = _ints(top_k, "--top-k")
    df = probe(scan, site=site, cv=cv, control=control, model=classifier, seed=seed)
    best = int(df.loc[df["accuracy"].idxmax(), "layer"])
    dim = scan.activations(best, site).shape[1]
    ranking, curve = probe_neurons(scan, best, site=site, top_k=[k for k in ks if k <= dim] or [dim], cv=cv, seed=seed)
    click.echo(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nbest layer {best}: accuracy with only the top-k neurons (ranked by probe weight)")
    click.echo(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out = Path(out) if out else Path(scan_dir).resolve().parent / f"{Path(scan_dir).resolve().name}-probe"
    path = build_page(out, "probe", f"llmri probe: {scan.model_name}",
                      [f"{scan.n_docs} documents, categories {', '.join(scan.label_names)}; site {site}, "
                       f"{cv}-fold cross-validation, {classifier} probe."],
                      [(probe_figure(df), probe_plot(df), "probe")],
                      [("Probe per layer", df, "probe"), (f"Top-k neurons at layer {best}", curve, "probe_top_k"),
                       (f"Neuron ranking at layer {best} (first 50)", ranking.head(50), "probe_neurons")])
    click.echo(f"\nprobe: {path}")


@cli.command("ablate")
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
@click.option("--download", is_flag=True)
@_ray_options
def ablate_cmd(corpus, model_name, out, measure, mode, scan_dir, layers, text_column, label_column, device, download,
               ray_mode, workers, gpus_per_worker):
    """Lesion map: ablate every attention head and every MLP in turn over CORPUS."""
    from .corpus import Corpus
    from .interventions import lesion_map
    from .model import load_model
    from .report import build_page
    from .store import Scan
    from .viz import lesion_figure, lesion_plot

    ray = _check_ray(ray_mode, workers, gpus_per_worker)
    layers = _ints(layers, "--layers") if layers else None
    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    scan = Scan.open(scan_dir) if scan_dir else None
    if ray is None:
        model = load_model(model_name, device=device, download=download)
        df = lesion_map(model, docs, measure=measure, mode=mode, scan=scan, layers=layers, progress=None)
        model_name = model.name
    else:
        from .distributed import lesion_map as lesion_map_on_ray

        df = lesion_map_on_ray(_model_loader(model_name, device, download), docs, measure=measure, mode=mode,
                               scan=scan, layers=layers, progress=None, **ray)
    top = df.reindex(df["effect"].abs().sort_values(ascending=False).index).head(10)
    click.echo(f"{df.attrs['measure']}: baseline {df.attrs['baseline']:.4g}; largest effects:")
    click.echo(top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    path = build_page(out, "lesion", f"llmri lesion map: {model_name}",
                      [f"{len(docs)} documents; {mode} ablation of each head and each layer's MLP in turn; "
                       f"measure: {df.attrs['measure']} (baseline {df.attrs['baseline']:.4g})."],
                      [(lesion_figure(df), lesion_plot(df), "lesion")],
                      [("Effects, largest first", df.reindex(df["effect"].abs().sort_values(ascending=False).index),
                        "lesion")])
    click.echo(f"lesion map: {path}")


@cli.command("patch")
@click.option("--model", "model_name", default="default", show_default=True)
@click.option("--clean", required=True, help="The clean input text.")
@click.option("--corrupted", required=True, help="The corrupted input (same number of tokens).")
@click.option("--out", required=True, help="Folder for patch.html, figures and tables.")
@click.option("--sites", default="resid,attn_out,mlp_out", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True)
def patch_cmd(model_name, clean, corrupted, out, sites, device, download):
    """Activation patching (causal tracing) from a clean into a corrupted run."""
    from .interventions import patch
    from .model import load_model
    from .report import build_page
    from .sites import parse_site
    from .viz import patch_figure, patch_plot

    model = load_model(model_name, device=device, dtype="float32", download=download)
    specs = [s.strip() for s in sites.split(",") if s.strip()]
    kinds = list(dict.fromkeys(parse_site(k)[0] for k in specs))
    res = patch(model, clean, corrupted, sites=specs, progress=None)
    click.echo(f"metric: clean {res.clean_metric:.4g}, corrupted {res.corrupted_metric:.4g}")
    sc = res.scores
    last = sc.loc[sc["kind"] == "resid", "layer"].max()
    trivial = (sc["kind"] == "resid") & (sc["layer"] == last)
    why = (f"resid.{last} is left out of the ranking: the metric is read from it, so patching it restores 1 at the "
           "read-out position and 0 elsewhere by construction") if trivial.any() else ""
    ranked = sc[~trivial].sort_values("restored", ascending=False)
    click.echo(ranked.head(5).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if why:
        click.echo(f"({why})")
    path = build_page(out, "patch", f"llmri activation patching: {model.name}",
                      [f"clean: {clean}", f"corrupted: {corrupted}",
                       f"metric: clean {res.clean_metric:.4g}, corrupted {res.corrupted_metric:.4g}; each cell "
                       "restores one site at one position from the clean run."],
                      [(patch_figure(res, k), patch_plot(res, k), f"patch_{k}") for k in kinds],
                      [("Scores, most restored first" + (f" ({why})" if why else ""), ranked, "patch_ranked"),
                       ("All scores", res.scores, "patch")])
    click.echo(f"patching: {path}")


@cli.command("explain")
@click.argument("scan_dir")
@click.option("--site", required=True, help="A site with token-level records, e.g. mlp.10.")
@click.option("--neurons", "neuron_spec", default=None, help="Neurons: top:K, START:END or 3,5,9.")
@click.option("--sae", default=None, help="An SAE folder: explain its features instead of neurons.")
@click.option("--features", "feature_spec", default=None, help="SAE features: top:K, START:END or 3,5,9.")
@click.option("--backend", type=click.Choice(["local", "openai"]), default="local", show_default=True,
              help="local: a chat model run by llmri; openai: any OpenAI-compatible server.")
@click.option("--model-name", default=None,
              help="local: model name or folder (default: default-decoder); openai: the served model.")
@click.option("--base-url", default=None, help="openai: the server, e.g. http://localhost:8080/v1.")
@click.option("--api-key-env", default=None, help="openai: environment variable holding the API key.")
@click.option("--completion-logprobs", is_flag=True,
              help="openai: read simulator probabilities from /v1/completions (echo + logprobs).")
@click.option("--scorers", default="simulation,detection,fuzzing", show_default=True)
@click.option("--style", type=click.Choice(["bills", "delphi"]), default="bills", show_default=True)
@click.option("--simulator", type=click.Choice(["pmi", "all_at_once"]), default=None,
              help="Simulation scoring: pmi (default with --backend local) or all_at_once (Bills et al.; "
                   "the only one with --backend openai).")
@click.option("--no-baseline", is_flag=True, help="Skip the random-explanation baseline.")
@click.option("--out", required=True, help="Folder for the tables, the page and the call cache.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_ray_options
def explain_cmd(scan_dir, site, neuron_spec, sae, feature_spec, backend, model_name, base_url, api_key_env,
                completion_logprobs, scorers, style, simulator, no_baseline, out, device, seed, ray_mode, workers, gpus_per_worker):
    """Explain neurons (or SAE features) of the Scan in SCAN_DIR with a language model and score
    the explanations by simulation, detection and fuzzing."""
    from .explain import Explainer, LocalLM, OpenAICompatible, parse_units
    from .report.explain import explain
    from .explain.scoring import SCORERS
    from .sites import parse_site
    from .store import Scan

    ray = _check_ray(ray_mode, workers, gpus_per_worker)
    if sae and neuron_spec:
        raise LlmriError("--neurons and --sae exclude each other; with --sae choose --features")
    spec = feature_spec if sae else neuron_spec
    if spec is None:
        raise LlmriError("--features is required with --sae" if sae else "--neurons is required (e.g. top:50)")
    units = parse_units(spec)
    names = [s.strip() for s in scorers.split(",") if s.strip()]
    bad = [s for s in names if s not in SCORERS]
    if bad or not names:
        raise LlmriError(f"--scorers {scorers!r}: choose from {', '.join(SCORERS)}")
    if parse_site(site)[1] is None:
        raise LlmriError(f"--site {site!r}: give one layer, e.g. {site}.10")
    if backend == "openai" and (not base_url or not model_name):
        raise LlmriError("--backend openai needs --base-url and --model-name")
    if backend == "openai" and simulator == "pmi":
        raise LlmriError("--simulator pmi needs --backend local (a server gives no log-probabilities of arbitrary words)")
    if Path(out).exists() and not Path(out).is_dir():
        raise LlmriError(f"{out}: exists and is not a folder; choose another output folder")
    scan = Scan.open(scan_dir)
    if site not in scan.token_sites:
        raise LlmriError(f"site {site!r} has no token-level records in {scan_dir}; token sites: "
                         f"{', '.join(scan.token_sites) or 'none (rescan with --token-sites)'}")
    encoder = _load_sae(sae) if sae else None
    if backend == "openai":
        be = OpenAICompatible(base_url, model_name, api_key_env=api_key_env, completion_logprobs=completion_logprobs)
    else:
        be = LocalLM(model_name or "default-decoder", device=device)
    res = explain(scan, site, units, Explainer(be, style=style, seed=seed, simulator=simulator), scorers=names, encoder=encoder,
                  meta={"sae": str(Path(sae).resolve())} if sae else None,
                  baseline=not no_baseline, out=out, progress=None,
                  **({} if ray is None else dict(engine="ray", **ray)))
    cols = [c for c in res.table.columns if c in ("unit", "simulation_score", "simulation_baseline",
                                                 "detection_balanced_accuracy", "fuzzing_balanced_accuracy", "explanation")]
    click.echo(res.table[cols].to_string(index=False, max_colwidth=60, float_format=lambda v: f"{v:.3f}"))
    st = res.info["stats"]
    click.echo(f"\n{st['calls']} calls ({st['cache_hits']} from the cache), {st['prompt_tokens']} prompt and "
               f"{st['completion_tokens']} completion tokens")
    click.echo(f"explanations: {Path(out) / 'explanations.csv'}")


def _load_sae(path):
    """An SAE folder (llmri/SAELens or sparsify layout) as an encoder with ``encode``."""
    try:
        from .sae import SAE
    except ImportError:
        raise LlmriError("--sae needs llmri's SAE module (llmri.sae), which this installation lacks") from None
    return SAE.load(path)


def _floats(value: str, flag: str) -> list[float]:
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LlmriError(f"{flag} {value!r}: expected comma-separated numbers, e.g. -8,-4,0,4,8") from None
    if not out:
        raise LlmriError(f"{flag}: give at least one number")
    return out


@cli.command("generate")
@click.argument("prompts", nargs=-1, required=True)
@click.option("--model", "model_name", default="default-decoder", show_default=True,
              help="A decoder: Hugging Face id, local folder or .gguf file.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chat/--no-chat", default=None, help="Apply the chat template (default: when the tokenizer has one).")
@click.option("--system", default=None, help="A system message for the chat template.")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: [{prompt, generation}, ...].")
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True)
def generate_cmd(prompts, model_name, max_new_tokens, chat, system, sample, temperature, seed, as_json, device,
                 download):
    """Generate a continuation (an answer, with the chat template) for each of PROMPTS."""
    import json

    from .generate import generate
    from .model import load_model

    if sample and not temperature > 0:
        raise LlmriError(f"--temperature must be > 0 when sampling, got {temperature}")
    model = load_model(model_name, device=device, download=download)
    outs = generate(model, list(prompts), max_new_tokens=max_new_tokens, chat=chat, system=system,
                    do_sample=sample, temperature=temperature, seed=seed)
    if as_json:
        click.echo(json.dumps([{"prompt": p, "generation": g} for p, g in zip(prompts, outs)],
                              ensure_ascii=False, indent=1))
    else:
        for i, (p, g) in enumerate(zip(prompts, outs)):
            click.echo(("" if i == 0 else "\n") + (f"> {p}\n" if len(prompts) > 1 else "") + g)


@cli.command("steer")
@click.argument("prompts", nargs=-1, required=True)
@click.option("--scan", "scan_dir", required=True, help="A Scan of the same model with both categories.")
@click.option("--positive", required=True, help="Category (or comma-separated categories) to steer toward.")
@click.option("--negative", required=True, help="Category (or comma-separated categories) to steer away from.")
@click.option("--layer", type=int, required=True, help="Layer of the site where the vector is added.")
@click.option("--out", required=True, help="Folder for steer.html, steer.json, figures and tables.")
@click.option("--model", "model_name", default="default-decoder", show_default=True)
@click.option("--alphas", default="-8,-4,0,4,8", show_default=True, help="Steering strengths.")
@click.option("--site", type=click.Choice(["resid", "attn_out", "mlp_out"]), default="resid", show_default=True)
@click.option("--mode", type=click.Choice(["add", "clamp"]), default="add", show_default=True,
              help="add alpha x vector, or clamp the component along the vector to alpha.")
@click.option("--probe-layer", type=int, default=None, help="Layer of the probe that scores generations "
              "(default: --layer).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True)
def steer_cmd(prompts, scan_dir, positive, negative, layer, out, model_name, alphas, site, mode, probe_layer,
              max_new_tokens, seed, device, download):
    """Steer generation of PROMPTS with the Scan's POSITIVE-minus-NEGATIVE vector at several strengths."""
    from .generate import steer_sweep
    from .model import load_model
    from .report import _output_folder, build_page
    from .store import Scan, atomic_write_json
    from .viz import steer_figure, steer_plot

    values = _floats(alphas, "--alphas")
    scan = Scan.open(scan_dir)
    pos = [c.strip() for c in positive.split(",") if c.strip()]
    neg = [c.strip() for c in negative.split(",") if c.strip()]
    for flag, names in (("--positive", pos), ("--negative", neg)):
        missing = [c for c in names if c not in scan.label_names] or ([] if names else [""])
        if missing:
            raise LlmriError(f"{flag}: category {missing[0]!r} is not in {scan_dir} "
                             f"(categories: {', '.join(scan.label_names)})")
    for flag, L in (("--layer", layer), ("--probe-layer", probe_layer)):
        if L is not None and L not in scan.layers(site):
            raise LlmriError(f"{flag} {L}: {scan_dir} holds {site} at layers "
                             f"{', '.join(map(str, scan.layers(site))) or 'none'}")
    out = _output_folder(out)  # checked before the model loads
    model = load_model(model_name, device=device, download=download)
    df = steer_sweep(model, scan, pos, neg, layer, values, list(prompts), site=site, mode=mode,
                     max_new_tokens=max_new_tokens, probe_layer=probe_layer, seed=seed)
    click.echo(df.to_string(index=False, max_colwidth=70, float_format=lambda v: f"{v:.3f}"))
    atomic_write_json(out / "steer.json", {"settings": {**df.attrs, "model": model.name, "scan": str(scan_dir),
                                                        "alphas": values, "max_new_tokens": max_new_tokens,
                                                        "seed": seed},
                                           "rows": df.to_dict(orient="records")})
    path = build_page(out, "steer", f"llmri steering: {model.name}",
                      [f"Vector: mean of {df.attrs['positive']} minus mean of {df.attrs['negative']} in {scan_dir}, "
                       f"{mode} at {df.attrs['site']} (norm {df.attrs['vector_norm']:.4g}).",
                       f"Each generation is read back unsteered and scored by a logistic-regression probe trained "
                       f"on the scan's layer {df.attrs['probe_layer']}: P({df.attrs['positive']}). Greedy decoding, "
                       f"{max_new_tokens} new tokens."],
                      [(steer_figure(df), steer_plot(df), "steer")],
                      [("Generations (prompts by rows, alphas by columns)", _steer_table(df), "steer_grid"),
                       ("Every generation with its probe probability", df, "steer")])
    click.echo(f"steering: {path}")


def _steer_table(df):
    """Prompts by rows, alphas by columns; each cell the generation and its probe probability."""
    grid = df.assign(cell=[f"{g} [P={p:.2f}]" for g, p in zip(df["generation"], df["p_positive"])])
    table = grid.pivot(index="prompt", columns="alpha", values="cell").reset_index()
    table.columns = ["prompt"] + [f"alpha {a:g}" for a in table.columns[1:]]
    return table


# ---------------------------------------------------------------- sparse autoencoders
@cli.group("sae")
def sae_group() -> None:
    """Sparse-autoencoder features: train, eval, report, steer."""


def _sae_out(out: str, overwrite: bool) -> Path:
    out_p = Path(out)
    if out_p.exists() and not out_p.is_dir():
        raise LlmriError(f"{out}: exists and is not a folder; choose another --out")
    if out_p.is_dir() and any(out_p.iterdir()) and not overwrite:
        raise LlmriError(f"{out}: folder is not empty; choose a new --out or pass --overwrite")
    return out_p


@sae_group.command("train")
@click.argument("scan_dir")
@click.option("--site", "--sites", "site", required=True,
              help="Token site(s) to read, e.g. resid.15 or resid.4,resid.8 (one pass, one sub-folder each).")
@click.option("--target-site", default=None, help="Train transcoders: the site to predict, e.g. mlp_out.15.")
@click.option("--latents", type=int, default=4096, show_default=True, help="Number of SAE features.")
@click.option("--k", type=int, default=32, show_default=True, help="Active features per token (TopK/BatchTopK).")
@click.option("--arch", type=click.Choice(["batchtopk", "topk", "jumprelu", "relu"]), default="batchtopk",
              show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=4096, show_default=True, help="Tokens per step.")
@click.option("--lr", type=float, default=None, help="Learning rate (default 2e-4 / sqrt(latents / 16384)).")
@click.option("--l1", "l1_coefficient", type=float, default=5.0, show_default=True, help="L1 weight (relu).")
@click.option("--l0", "l0_coefficient", type=float, default=0.05, show_default=True, help="L0 weight (jumprelu).")
@click.option("--skip-outliers", type=float, default=10.0, show_default=True,
              help="Leave out tokens whose norm exceeds this many times the median (massive activations); 0 keeps all.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", required=True, help="Folder for the SAE (one sub-folder per site when several).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
def sae_train_cmd(scan_dir, site, target_site, latents, k, arch, epochs, batch_size, lr, l1_coefficient,
                  l0_coefficient, skip_outliers, seed, device, out, overwrite):
    """Train an SAE (or transcoder) on the token records of SCAN_DIR; saved in SAELens' layout."""
    from .sae import train_sae
    from .store import Scan

    out_p = _sae_out(out, overwrite)
    scan = Scan.open(scan_dir)
    sites = [x.strip() for x in site.split(",") if x.strip()]
    targets = [x.strip() for x in target_site.split(",")] if target_site else None
    if targets is not None and len(targets) != len(sites):
        raise LlmriError(f"--target-site: give one target per site ({len(sites)}), got {len(targets)}")
    result = train_sae(scan, sites[0] if len(sites) == 1 else sites, n_latents=latents, k=k, arch=arch,
                       target_site=(targets[0] if targets and len(sites) == 1 else targets), epochs=epochs,
                       batch_size=batch_size, lr=lr, l1_coefficient=l1_coefficient, l0_coefficient=l0_coefficient,
                       skip_outliers=skip_outliers or None, seed=seed, device=device, progress=None)
    saes = {sites[0]: result} if len(sites) == 1 else result
    for name, sae in saes.items():
        folder = out_p if len(saes) == 1 else out_p / name
        sae.save(folder)
        last = sae.metadata["final"]
        click.echo(f"{sae!r}: {folder}  (last batch: explained variance {last['ev']:.3f}, L0 {last['l0']:.1f}, "
                   f"dead {last['dead']:.1%})")


@sae_group.command("eval")
@click.argument("sae_dir")
@click.option("--model", "model_name", required=True, help="The model the SAE was trained on.")
@click.option("--corpus", required=True, help="Held-out texts: a corpus folder or CSV/TSV/JSONL file.")
@click.option("--batch-tokens", type=int, default=4096, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True)
def sae_eval_cmd(sae_dir, model_name, corpus, batch_tokens, device, download):
    """Evaluate the SAE in SAE_DIR spliced into the model: L0, explained variance, CE loss score, KL.
    The numbers are also written to SAE_DIR/eval.json."""
    from .corpus import Corpus
    from .model import load_model
    from .sae import SAE, evaluate_sae
    from .store import atomic_write_json

    sae = SAE.load(sae_dir)
    docs = Corpus.from_path(corpus)
    model = load_model(model_name, device=device, dtype="float32", download=download)
    m = evaluate_sae(sae, model, docs, batch_tokens=batch_tokens, progress=None)
    scalars = {k: v for k, v in m.items() if k != "feature_density"}
    atomic_write_json(Path(sae_dir) / "eval.json", scalars)
    for key, v in scalars.items():
        click.echo(f"{key:24s} {v:.4g}" if isinstance(v, float) else f"{key:24s} {v}")


@sae_group.command("report")
@click.argument("sae_dir")
@click.option("--scan", "scan_dir", required=True, help="Scan with token records of the SAE's site.")
@click.option("--out", default=None, help="Folder for features.html (default: SAE_DIR-report).")
@click.option("--model", "model_name", default=None, help="Model, for output tokens (W_dec @ W_U).")
@click.option("--cards", type=int, default=200, show_default=True, help="Features with a dashboard in the page.")
@click.option("--map", "method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True)
@click.option("--explanations", multiple=True, help="An llmri explain --sae output folder of this SAE "
              "(repeatable); default: the explain runs found beside SAE_DIR.")
@click.option("--device", default="auto", show_default=True)
def sae_report_cmd(sae_dir, scan_dir, out, model_name, cards, method, explanations, device):
    """Feature browser of SAE_DIR over a Scan: map, searchable table, dashboards, categories."""
    import json

    from .model import load_model
    from .report import build_feature_browser
    from .sae import SAE, feature_activations
    from .store import Scan

    from .explain.results import find_explanations

    if cards < 0:
        raise LlmriError(f"--cards must be >= 0, got {cards}")
    for e in explanations:
        if not (Path(e) / "explanations.csv").is_file():
            raise LlmriError(f"--explanations {e}: no explanations.csv there; run llmri explain --sae with --out {e}")
    sae = SAE.load(sae_dir)
    explanations = list(explanations) or find_explanations(sae_dir, sae.site, "feature")
    scan = Scan.open(scan_dir)
    model = load_model(model_name, device=device, dtype="float32") if model_name else None
    feats = feature_activations(sae, scan, progress=None)
    ev = Path(sae_dir) / "eval.json"
    metrics = json.loads(ev.read_text()) if ev.is_file() else None
    out = Path(out) if out else Path(sae_dir).resolve().parent / f"{Path(sae_dir).resolve().name}-report"
    path = build_feature_browser(sae, feats, out, model=model, metrics=metrics, n_cards=cards, method=method,
                                 explanations=explanations)
    click.echo(f"features: {path}")


@sae_group.command("steer")
@click.argument("sae_dir")
@click.argument("prompt")
@click.option("--model", "model_name", required=True)
@click.option("--feature", type=int, required=True, help="Feature id to clamp.")
@click.option("--value", "values", multiple=True, default=("0", "5x", "10x"), show_default=True,
              help="Clamp values, absolute or multiples of the feature's maximum ('10x'); repeat for several.")
@click.option("--max-new-tokens", type=int, default=40, show_default=True)
@click.option("--out", default=None, help="Folder for steer.html (side-by-side generations).")
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True)
def sae_steer_cmd(sae_dir, prompt, model_name, feature, values, max_new_tokens, out, device, download):
    """Generate from PROMPT with one SAE feature clamped to each --value, side by side."""
    import pandas as pd

    from .generate import generate
    from .model import load_model
    from .sae import SAE, clamp
    from .sae.clamp import resolve_values

    sae = SAE.load(sae_dir)
    for v in values:  # every value checked before the model loads
        resolve_values(sae, {feature: v})
    model = load_model(model_name, device=device, dtype="float32", download=download)
    rows = [("none (original)", generate(model, prompt, max_new_tokens=max_new_tokens))]
    for v in values:
        with clamp(model, sae, {feature: v}) as c:
            rows.append((f"{v} = {c.values[0]:.4g}", generate(model, prompt, max_new_tokens=max_new_tokens)))
    for label, text in rows:
        click.echo(f"[{label}] {text}")
    if out:
        from .report import build_page

        path = build_page(out, "steer", f"llmri steer: feature {feature} of {sae.site}",
                          [f"prompt: {prompt}", f"{sae!r}; greedy decoding, {max_new_tokens} new tokens"], [],
                          [("Generations", pd.DataFrame(rows, columns=["clamp", "generation"]), "steer")])
        click.echo(f"steer: {path}")


# ---------------------------------------------------------------- feature circuits
@cli.command("circuit")
@click.argument("prompt")
@click.option("--model", "model_name", default="default-decoder", show_default=True)
@click.option("--saes", required=True, help="Folder of residual-stream SAE folders (llmri sae train --sites ...) "
              "or of transcoder folders (--sites mlp_in.L,... --target-site mlp_out.L,...).")
@click.option("--target", default=None, help="Target token, e.g. ' Paris' (default: the model's top token).")
@click.option("--contrast", default=None, help="Second token: the metric becomes logit(target) - logit(contrast).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--out", required=True, help="Folder for circuit.html, graph.json, CSVs and figures.")
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
@click.option("--download", is_flag=True)
def circuit_cmd(prompt, model_name, saes, target, contrast, chat, out, max_nodes, node_threshold, edge_threshold,
                freeze, k_spec, ablation, no_validate, explanations, scan_dir, device, download):
    """Attribution graph of the model's answer to PROMPT over SAE features: which features, at
    which layers and positions, move it toward --target, and how they feed each other."""
    from .circuits import attribute, feature_explanations, load_saes, validate_circuit
    from .model import load_model
    from .report import build_circuit_page

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
    if Path(out).exists() and not Path(out).is_dir():
        raise LlmriError(f"{out}: exists and is not a folder; choose another --out")
    sae_list = load_saes(saes)
    explanations = list(explanations) or None
    feature_explanations(sae_list, explanations)  # checked before the model loads
    scan = None
    if scan_dir is not None:
        from .store import Scan

        scan = Scan.open(scan_dir)
        missing = [s.site for s in sae_list if s.site not in scan.token_sites]
        if missing:
            raise LlmriError(f"--scan {scan_dir}: no token records of {missing[0]} (scan with --token-sites "
                             f"{','.join(s.site for s in sae_list)})")
    model = load_model(model_name, device=device, dtype="float32", download=download)
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


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="llmri", standalone_mode=False)
    except LlmriError as e:
        if _DEBUG:
            raise
        _echo_err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _echo_err(e.format_message().replace("\n", " "))
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _echo_err("interrupted; rerun the same command to continue where it stopped")
        sys.exit(130)
    except Exception as e:  # an unexpected failure: still one line, unless --debug
        if _DEBUG or os.environ.get("LLMRI_DEBUG"):
            raise
        _echo_err(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(rerun with --debug for the traceback)")
        sys.exit(1)
    sys.exit(0)

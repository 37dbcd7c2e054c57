"""The ``llmri`` command: ``llmri scan``, ``llmri demo``.

Errors are one line on stderr with exit status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import LlmriError

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
                 help="Hugging Face id or local folder; 'default' is the embedded all-MiniLM-L6-v2."),
    click.option("--pool", type=click.Choice(["mean", "first", "last", "max"]), default="mean",
                 show_default=True, help="How token vectors become one vector per document."),
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


def _run_scan(corpus, out, model_name, pool, sites, token_sites, layers, batch_tokens, max_length,
              device, dtype, download, overwrite, need_model=False):
    """Scan ``corpus`` into ``out``; an identical earlier request is answered from disk, model unloaded.

    Returns ``(model or None, scan)``; with ``need_model`` the model is loaded in any case.
    """
    import hashlib
    import json

    from .model import files_fingerprint

    folder, layer_list = _check_scan_args(model_name, out, sites, token_sites, layers, batch_tokens,
                                          max_length, dtype)
    request = None
    if folder is not None:
        options = dict(pool=pool, sites=sites, token_sites=token_sites, layers=layer_list,
                       batch_tokens=batch_tokens, max_length=max_length, device=device, dtype=dtype)
        request = hashlib.sha256(json.dumps(dict(model=files_fingerprint(folder), corpus=corpus.fingerprint,
                                                 options=options), sort_keys=True).encode()).hexdigest()[:20]
        cached = _cached_scan(out, request)
        if cached is not None and not need_model:
            return None, cached
    if not overwrite:  # a different scan in --out, told before the model loads when the corpus or pool says so
        from .store import read_manifest

        old = read_manifest(out) if Path(out).is_dir() else None
        diffs = [] if old is None else (
            (["corpus"] if old.get("corpus", {}).get("fingerprint") != corpus.fingerprint else [])
            + ([f"pool {old['settings'].get('pool')} -> {pool}"] if old.get("settings", {}).get("pool") != pool else []))
        if diffs:
            raise LlmriError(f"{out}: holds a different scan ({', '.join(diffs)}); "
                             "choose another output folder or pass --overwrite")
    from .capture import scan
    from .model import load_model

    model = load_model(model_name, device=device, dtype=dtype, download=download)
    result = scan(model, corpus, out, sites=_specs(sites), pool=pool, layers=layer_list,
                  max_length=max_length, batch_tokens=batch_tokens, token_sites=_specs(token_sites),
                  overwrite=overwrite, progress=None, request=request)
    return model, result


@cli.command("scan")
@click.argument("corpus")
@click.option("--out", required=True, help="Folder for the Scan.")
@click.option("--text-column", default=None, help="Text column of a CSV/TSV/JSONL corpus.")
@click.option("--label-column", default=None, help="Label column of a CSV/TSV/JSONL corpus.")
@_scan_options
def scan_cmd(corpus, out, text_column, label_column, **kw):
    """Scan CORPUS (a folder of label sub-folders, or a CSV/TSV/JSONL file) into --out."""
    from .corpus import Corpus

    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    click.echo(_summary(_run_scan(docs, out, **kw)[1]))


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
@_report_options
def report_cmd(scan_dir, out, **kw):
    """Analyse the Scan in SCAN_DIR: regions, NRAGs, metrics, evaluation, one HTML file."""
    from .store import Scan

    scan = Scan.open(scan_dir)
    out = Path(out) if out else Path(scan_dir).resolve().parent / f"{Path(scan_dir).resolve().name}-report"
    path = _run_report(scan, out, **kw)
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
@click.option("--position", type=int, default=None,
              help="Token whose inputs rollout and flow explain (default: first for encoders, last for decoders).")
@click.option("--device", default="auto", show_default=True)
@click.option("--download", is_flag=True, help="Allow fetching the model from the Hugging Face hub.")
def attention_cmd(text, model_name, out, position, device, download):
    """Attention of one TEXT: every head, an interactive head view, rollout and flow."""
    from .attention import attention
    from .model import load_model
    from .report import build_attention_page

    model = load_model(model_name, device=device, dtype="float32", download=download)
    att = attention(model, text)
    path = build_attention_page(att, out, position=position, model_name=model.name)
    roll = att.rollout()[att.position(position)]
    top = sorted(range(len(att.tokens)), key=lambda k: -roll[k])[:5]
    click.echo(f"{len(att.tokens)} tokens, {att.n_layers} layers x {att.n_heads} heads; "
               f"largest rollout: " + ", ".join(f"{att.tokens[k]} {roll[k]:.3f}" for k in top))
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
def ablate_cmd(corpus, model_name, out, measure, mode, scan_dir, layers, text_column, label_column, device, download):
    """Lesion map: ablate every attention head and every MLP in turn over CORPUS."""
    from .corpus import Corpus
    from .interventions import lesion_map
    from .model import load_model
    from .report import build_page
    from .store import Scan
    from .viz import lesion_figure, lesion_plot

    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    scan = Scan.open(scan_dir) if scan_dir else None
    model = load_model(model_name, device=device, download=download)
    df = lesion_map(model, docs, measure=measure, mode=mode, scan=scan,
                    layers=_ints(layers, "--layers") if layers else None, progress=None)
    top = df.reindex(df["effect"].abs().sort_values(ascending=False).index).head(10)
    click.echo(f"{df.attrs['measure']}: baseline {df.attrs['baseline']:.4g}; largest effects:")
    click.echo(top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    path = build_page(out, "lesion", f"llmri lesion map: {model.name}",
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

"""``llmri scan``, ``llmri demo`` and ``llmri report``: capture a corpus into a Scan, and the report
of a Scan.

Settings are checked by the library's :class:`llmri.scan_settings.ScanSettings` before a model
loads, and a repeated scan is answered from disk by :func:`llmri.scan_settings.cached_scan`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from .options import (_check_explanations, _check_ray, _default_out, _ints, _model_loader, _ray_options,
                      _report_options, _scan_options)


def _summary(scan) -> str:
    plan = scan.manifest["plan"]
    lines = [f"scan: {scan.folder}",
             f"  model   {scan.model_name} ({scan.n_layers} blocks)",
             f"  corpus  {scan.n_docs} documents, labels: {', '.join(scan.label_names)}",
             f"  sites   {', '.join(scan.site_kinds)}; pool {scan.settings['pool']}; "
             f"{plan['n_tokens']} tokens in {plan['n_batches']} batches; {scan.settings.get('dtype', 'float32')}"]
    if plan["truncated"]:
        lines.append(f"  {plan['truncated']} documents truncated to {scan.settings['max_length']} tokens")
    if scan.origin == "resumed":
        lines.append(f"  resumed an interrupted scan: {scan.resumed_shards} of {plan['n_shards']} shards were "
                     f"already on disk; captured the other {plan['n_shards'] - scan.resumed_shards}")
    elif scan.origin == "cached":
        lines.append("  answered from disk: the same scan was already complete (nothing captured)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the scan, through the library's settings
def _settings(sites, token_sites, layers, batch_tokens, max_length, dtype, pool="auto", device="auto",
              shard_tokens=None, store_dtype="float32"):
    from ..scan_settings import ScanSettings

    return ScanSettings(sites=sites, token_sites=token_sites, pool=pool, layers=layers, batch_tokens=batch_tokens,
                        max_length=max_length, shard_tokens=shard_tokens, device=device, dtype=dtype,
                        store_dtype=store_dtype, flags=True)


def _run_scan(corpus, out, model_name, pool, sites, token_sites, layers, batch_tokens, max_length,
              device, dtype, download, overwrite, shard_tokens=None, need_model=False, engine=None,
              store_dtype="float32"):
    """Scan ``corpus`` into ``out``; an identical earlier request is answered from disk, model unloaded
    (:func:`llmri.scan_settings.cached_scan`). Every setting is checked before the model loads.

    Returns ``(model or None, scan)``; with ``need_model`` the model is loaded in any case.
    """
    from ..scan_settings import cached_scan, check_same_scan, out_folder, scan_request

    settings = _settings(sites, token_sites, layers, batch_tokens, max_length, dtype, pool, device, shard_tokens,
                         store_dtype)
    out_folder(out)
    request = scan_request(model_name, corpus, settings)
    cached = cached_scan(out, request)
    if cached is not None and not need_model:
        return None, cached
    if not overwrite:  # a different scan in --out, told before the model loads when the corpus or pool says so
        check_same_scan(out, corpus, settings)
    from ..capture import scan
    from ..model import load_model

    if engine is None or need_model:
        model = load_model(model_name, device=device, dtype=dtype, download=download)
    else:
        model = _model_loader(model_name, device, download, dtype)
    result = scan(model, corpus, out, settings=settings, overwrite=overwrite, progress=None, request=request,
                  engine=engine or "local")
    return (model if need_model else None), result


# ---------------------------------------------------------------- the commands
@click.command("scan")
@click.argument("corpus")
@click.option("--out", required=True, help="Folder for the Scan.")
@click.option("--text-column", default=None, help="Text column of a CSV/TSV/JSONL corpus.")
@click.option("--label-column", default=None, help="Label column of a CSV/TSV/JSONL corpus.")
@_scan_options
@click.option("--shard-tokens", type=int, default=None,
              help="Real tokens per shard, the unit of work of --ray workers (default: 65536 pooled only).")
@click.option("--store-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="How activations are kept on disk: bfloat16 halves the scan (README, Precision).")
@_ray_options
def scan_cmd(corpus, out, text_column, label_column, ray_mode, workers, gpus_per_worker, **kw):
    """Scan CORPUS (a folder of label sub-folders, or a CSV/TSV/JSONL file) into --out."""
    from ..corpus import Corpus

    engine = _check_ray(ray_mode, workers, gpus_per_worker)
    if kw["layers"] is not None:
        _ints(kw["layers"], "--layers")
    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    click.echo(_summary(_run_scan(docs, out, engine=engine, **kw)[1]))


def _categories(categories) -> list[str] | None:
    return [c.strip() for c in categories.split(",") if c.strip()] if categories is not None else None


def _check_report(label_names, components, grid, categories, permutations, **_) -> None:
    from ..report.scan import check_report_settings

    check_report_settings(label_names, _categories(categories), components, grid, permutations, flags=True)


def _run_report(scan, out, reducer, components, grid, categories, permutations, seed, preset=None, **extra):
    from ..report import build_report

    cats = _categories(categories)
    click.echo(f"building the report ({reducer}, {components} components, {grid}x{grid} grid) ...", err=True)
    return build_report(scan, out, reducer=reducer, n_components=components, grid=grid, categories=cats,
                        n_permutations=permutations, seed=seed, progress=None, preset=preset, **extra)


@click.command("report")
@click.argument("scan_dir")
@click.option("--out", default=None, help="Folder for report.html, figures and tables (default: SCAN_DIR-report).")
@click.option("--explanations", multiple=True, help="An llmri explain output folder of mlp neurons of this scan "
              "(repeatable); default: the explain runs found beside SCAN_DIR.")
@click.option("--sae", "saes", multiple=True,
              help="SAE folder for the Features section (repeat for several; default: SCAN_DIR/saes/*); "
              "a shipped set by model name (default-decoder) or one of its SAEs (default-decoder/resid.16).")
@_report_options
def report_cmd(scan_dir, out, explanations, saes, **kw):
    """Analyse the Scan in SCAN_DIR: regions, NRAGs, metrics, evaluation, one HTML file."""
    from ..report import output_folder
    from ..store import Scan

    _check_explanations(explanations, "")
    from ..sae.collection import sae_folders_of  # torch, after the quick checks

    saes = sae_folders_of(saes, "--sae")
    scan = Scan.open(scan_dir)
    _check_report(scan.label_names, **kw)
    out = output_folder(out) if out is not None else _default_out(scan_dir, "report")
    path = _run_report(scan, out, explanations=list(explanations) or None, saes=list(saes) or None, **kw)
    click.echo(f"report: {path}")


@click.command("demo")
@click.option("--out", default="llmri-demo", show_default=True, help="Folder for the demo's outputs.")
@click.option("--features", is_flag=True,
              help="The features demo instead: the shipped SAEs of default-decoder on the bundled labelled corpora "
                   "(feature map and neighbourhoods, top features per category, a clamped feature measured, the "
                   "attribution graph of a two-hop prompt) in OUT/features/features.html; its scan in OUT/features-scan.")
@click.option("--saes", default=None, help="With --features: the SAEs (default: default-decoder, the set shipped "
              "with llmri), or a folder of SAE folders.")
@_scan_options(sites="resid,mlp,attn", token_sites="mlp.-1")
@_report_options
def demo_cmd(out, features, saes, reducer, components, grid, categories, permutations, seed, preset, **kw):
    """Scan the bundled demo corpus with the embedded default model and write the report (with
    --features: the features demo of the embedded decoder's shipped SAEs)."""
    from ..corpus import demo_corpus

    if features:
        return _features_demo(out, saes, seed, **kw)
    if saes is not None:
        raise LlmriError("--saes belongs to the features demo: add --features")
    corpus = demo_corpus()
    _check_report(corpus.label_names, components, grid, categories, permutations)
    model, result = _run_scan(corpus, Path(out) / "scan", need_model=True, **kw)
    click.echo(_summary(result))
    path = _run_report(result, Path(out) / "report", reducer, components, grid, categories, permutations, seed,
                       preset=preset, model=model, attention_text=corpus.texts[0])
    click.echo(f"report: {path}")


# flags of the scan and the report that the features demo has no use for
_NOT_FEATURES = ("pool", "sites", "token_sites", "layers", "batch_tokens", "overwrite", "reducer", "components", "grid",
                 "categories", "permutations", "preset")


def _features_demo(out, saes, seed, model_name, max_length, device, dtype, download, **_):
    import time

    from click.core import ParameterSource

    ctx = click.get_current_context()
    for name in _NOT_FEATURES:
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            raise LlmriError(f"--{name.replace('_', '-')} does not apply to the features demo (--features)")
    if ctx.get_parameter_source("model_name") == ParameterSource.DEFAULT:
        model_name = "default-decoder"
    from ..report.features_demo import features_demo

    start = time.perf_counter()
    path = features_demo(Path(out) / "features", model=model_name, saes=saes or "default-decoder",
                         scan_dir=Path(out) / "features-scan", max_length=max_length or 128, device=device,
                         dtype=dtype, download=download, seed=seed)
    click.echo(_features_summary(path.parent, time.perf_counter() - start))
    click.echo(f"features demo: {path}")


def _features_summary(folder: Path, seconds: float) -> str:
    from ..disk import read_json_object

    clamp, demo = read_json_object(folder / "clamp.json"), read_json_object(folder / "demo.json")
    s, c = demo["settings"], clamp["settings"]
    lines = [f"features demo of {s['model']}: SAEs at {', '.join(s['sites'])}; {s['n_docs']} documents, "
             f"{s['n_tokens']} tokens; {seconds:.0f} s",
             f"  clamp   feature {c['feature']} of {c['site']} (the most {c['category']}-selective"
             + (" with a clean dashboard)" if c["clean"] else ")") + "; read back unclamped:"]
    def num(v, fmt):   # NaN reads back as None: no generated token the SAE decomposes (see clamp.json)
        return "n/a" if v is None else format(v, fmt)

    for r in clamp["summary"]:
        change = "" if r["value"] is None else (f" ({num(r['feature_change'], '+.3g')}; P {num(r['p_change'], '+.3f')}, "
                                                f"{r['direction']})")
        lines.append(f"          {r['clamp']:<18} feature {num(r['feature_mean'], '.3g')}, P({c['category']}) "
                     f"{num(r['p_category'], '.3f')}{change}")
    return "\n".join(lines)

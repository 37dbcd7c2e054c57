"""``llmri scan``, ``llmri demo`` and ``llmri report``: capture a corpus into a Scan, and the report
of a Scan.

The scan request cache (``_check_scan_args``, ``_scan_request``, ``_cached_scan``, ``_run_scan``)
is here until it moves into the library with the scan settings.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from .options import (_check_explanations, _check_ray, _default_out, _ints, _model_loader, _ray_options, _report_options, _scan_options,
                      _specs)


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


# ---------------------------------------------------------------- the scan request cache
def _check_scan_args(model_name, out, sites, token_sites, layers, batch_tokens, max_length, dtype):
    """Everything that can be checked without the model, checked before it loads (in milliseconds).

    Returns the model's folder on disk (``None`` when it must be downloaded) and the layer list.
    """
    from ..model import _DTYPES, config_n_layers, model_folder
    from ..sites import expand_sites, parse_site

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
    from ..store import Scan, complete_shards, read_manifest

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

    from ..model import files_fingerprint

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
        from ..store import read_manifest

        old = read_manifest(out) if Path(out).is_dir() else None
        diffs = [] if old is None else (
            (["corpus"] if old.get("corpus", {}).get("fingerprint") != corpus.fingerprint else [])
            + ([f"pool {old['settings'].get('pool')} -> {pool}"]
               if pool != "auto" and old.get("settings", {}).get("pool") != pool else []))
        if diffs:
            raise LlmriError(f"{out}: holds a different scan ({', '.join(diffs)}); "
                             "choose another output folder or pass --overwrite")
    from ..capture import scan
    from ..model import load_model

    model = load_model(model_name, device=device, dtype=dtype, download=download)
    result = scan(model, corpus, out, sites=_specs(sites), pool=pool, layers=layer_list,
                  max_length=max_length, batch_tokens=batch_tokens, token_sites=_specs(token_sites),
                  shard_tokens=shard_tokens, overwrite=overwrite, progress=None, request=request)
    return model, result


# ---------------------------------------------------------------- the commands
@click.command("scan")
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
    from ..corpus import Corpus

    ray = _check_ray(ray_mode, workers, gpus_per_worker)
    if kw["layers"] is not None:
        _ints(kw["layers"], "--layers")
    docs = Corpus.from_path(corpus, text_column=text_column, label_column=label_column)
    if ray is None:
        click.echo(_summary(_run_scan(docs, out, **kw)[1]))
        return
    click.echo(_summary(_scan_on_ray(docs, out, ray, **kw)))


def _scan_on_ray(docs, out, ray, model_name, pool, sites, token_sites, layers, batch_tokens, max_length, device,
                 dtype, download, overwrite, shard_tokens):
    """``llmri scan --ray``: the one place the CLI reaches the Ray executor for a scan."""
    from ..distributed import scan

    layers, request = _scan_request(docs, model_name, out, pool, sites, token_sites, layers, batch_tokens,
                                    max_length, device, dtype, shard_tokens)
    return scan(_model_loader(model_name, device, download, dtype), docs, out, sites=_specs(sites), pool=pool,
                layers=layers, max_length=max_length, batch_tokens=batch_tokens, token_sites=_specs(token_sites),
                shard_tokens=shard_tokens, overwrite=overwrite, progress=None, request=request, **ray)


def _run_report(scan, out, reducer, components, grid, categories, permutations, seed, preset=None, **extra):
    from ..report import build_report

    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    click.echo(f"building the report ({reducer}, {components} components, {grid}x{grid} grid) ...", err=True)
    return build_report(scan, out, reducer=reducer, n_components=components, grid=grid, categories=cats,
                        n_permutations=permutations, seed=seed, progress=None, preset=preset, **extra)


@click.command("report")
@click.argument("scan_dir")
@click.option("--out", default=None, help="Folder for report.html, figures and tables (default: SCAN_DIR-report).")
@click.option("--explanations", multiple=True, help="An llmri explain output folder of mlp neurons of this scan "
              "(repeatable); default: the explain runs found beside SCAN_DIR.")
@click.option("--sae", "saes", multiple=True,
              help="SAE folder for the Features section (repeat for several; default: SCAN_DIR/saes/*).")
@_report_options
def report_cmd(scan_dir, out, explanations, saes, **kw):
    """Analyse the Scan in SCAN_DIR: regions, NRAGs, metrics, evaluation, one HTML file."""
    from ..store import Scan

    _check_explanations(explanations, "")
    from ..sae.collection import is_sae_folder  # torch, after the quick checks

    for folder in saes:
        if not is_sae_folder(folder):
            raise LlmriError(f"--sae {folder}: not an SAE folder (no cfg.json)")
    scan = Scan.open(scan_dir)
    out = Path(out) if out else _default_out(scan_dir, "report")
    path = _run_report(scan, out, explanations=list(explanations) or None, saes=list(saes) or None, **kw)
    click.echo(f"report: {path}")


@click.command("demo")
@click.option("--out", default="llmri-demo", show_default=True, help="Folder for the demo's outputs.")
@_scan_options(sites="resid,mlp,attn", token_sites="mlp.-1")
@_report_options
def demo_cmd(out, reducer, components, grid, categories, permutations, seed, preset, **kw):
    """Scan the bundled demo corpus with the embedded default model and write the report."""
    from ..corpus import demo_corpus

    corpus = demo_corpus()
    model, result = _run_scan(corpus, Path(out) / "scan", need_model=True, **kw)
    click.echo(_summary(result))
    path = _run_report(result, Path(out) / "report", reducer, components, grid, categories, permutations, seed,
                       preset=preset, model=model, attention_text=corpus.texts[0])
    click.echo(f"report: {path}")

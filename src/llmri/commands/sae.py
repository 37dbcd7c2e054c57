"""``llmri sae``: sparse-autoencoder features: train, eval, report, steer."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import click

from ..errors import LlmriError
from .options import _check_explanations, _check_out, _default_out, _dtype_option, _specs


@click.group("sae")
def sae_group() -> None:
    """Sparse-autoencoder features: train, eval, report, steer."""


def _sae_out(out: str, overwrite: bool) -> Path:
    out_p = _check_out(out, "choose another --out")
    if out_p.is_dir() and any(out_p.iterdir()) and not overwrite:
        raise LlmriError(f"{out}: folder is not empty; choose a new --out or pass --overwrite")
    return out_p


CHECKPOINT = ".checkpoint.safetensors"  # where `sae train --model` keeps its checkpoint inside --out


@contextlib.contextmanager
def _one_line_warnings():
    """Library warnings (too few steps, a corpus read again) as one ``warning: ...`` line on stderr each."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        yield


@sae_group.command("train")
@click.argument("scan_dir", required=False)
@click.option("--model", "model_name", default=None,
              help="Train from this model on the fly instead of a Scan (with --corpus and --tokens; no Scan written).")
@click.option("--corpus", default=None, help="With --model: the texts, a corpus folder or CSV/TSV/JSONL file.")
@click.option("--tokens", type=int, default=None,
              help="With --model: the budget of training tokens (default 4,194,304); the corpus is read again "
                   "in a new order when it holds fewer.")
@click.option("--site", "--sites", "site", required=True,
              help="Token site(s) to read, e.g. resid.15 or resid.4,resid.8 (one pass, one sub-folder each).")
@click.option("--target-site", default=None, help="Train transcoders: the site to predict, e.g. mlp_out.15.")
@click.option("--latents", type=int, default=4096, show_default=True, help="Number of SAE features.")
@click.option("--k", type=int, default=32, show_default=True, help="Active features per token (TopK/BatchTopK).")
@click.option("--arch", type=click.Choice(["batchtopk", "topk", "jumprelu", "relu"]), default="batchtopk",
              show_default=True)
@click.option("--epochs", type=int, default=None, help="Passes over SCAN_DIR (default 1; --model trains for --tokens).")
@click.option("--batch-size", type=int, default=4096, show_default=True, help="Tokens per step.")
@click.option("--lr", type=float, default=None, help="Learning rate (default 2e-4 / sqrt(latents / 16384)).")
@click.option("--l1", "l1_coefficient", type=float, default=5.0, show_default=True, help="L1 weight (relu).")
@click.option("--l0", "l0_coefficient", type=float, default=0.05, show_default=True, help="L0 weight (jumprelu).")
@click.option("--skip-outliers", type=float, default=10.0, show_default=True,
              help="Leave out tokens whose norm exceeds this many times the median (massive activations); 0 keeps all.")
@click.option("--buffer-tokens", type=int, default=2**16, show_default=True,
              help="With --model: tokens in the shuffling buffer that mixes documents into each batch.")
@click.option("--batch-tokens", type=int, default=8192, show_default=True,
              help="With --model: padded tokens per forward pass.")
@click.option("--max-length", type=int, default=None, help="With --model: truncate documents (default: model limit).")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True,
              help=f"With --model: seconds between checkpoints (in --out/{CHECKPOINT}); rerun the same command "
                   "to resume a killed run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True,
              help="Training arithmetic: float32, bf16-mixed (bfloat16 matrix products; weights, optimiser state "
                   "and losses float32) or auto (bf16-mixed on native-bf16 hardware where the README's fidelity "
                   "table says it holds). The saved SAE is float32 either way. With --model the forward passes "
                   "run as `llmri scan` runs them.")
@click.option("--download", is_flag=True, help="With --model: fetch the model from the Hugging Face Hub if needed.")
@click.option("--out", required=True, help="Folder for the SAE (one sub-folder per site when several).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out.")
def sae_train_cmd(scan_dir, model_name, corpus, tokens, site, target_site, latents, k, arch, epochs, batch_size, lr,
                  l1_coefficient, l0_coefficient, skip_outliers, buffer_tokens, batch_tokens, max_length,
                  checkpoint_every, seed, device, dtype, download, out, overwrite):
    """Train an SAE (or transcoder) on the token records of SCAN_DIR, or with --model and --corpus on
    activations made on the fly; saved in SAELens' layout."""
    from ..sae import train_sae
    from ..sae.settings import StreamSettings, TrainSettings

    common = dict(n_latents=latents, k=k, arch=arch, batch_size=batch_size, lr=lr, l1_coefficient=l1_coefficient,
                  l0_coefficient=l0_coefficient, skip_outliers=skip_outliers or None, seed=seed, dtype=dtype,
                  flags=True)
    sites = _specs(site)
    targets = [x.strip() for x in target_site.split(",")] if target_site else None
    if targets is not None and len(targets) != len(sites):
        raise LlmriError(f"--target-site: give one target per site ({len(sites)}), got {len(targets)}")
    streaming = model_name is not None or corpus is not None or tokens is not None
    if streaming == (scan_dir is not None):
        raise LlmriError("give SCAN_DIR, or --model, --corpus and --tokens to train on the fly, not both"
                         if streaming else "give SCAN_DIR, or --model and --corpus to train on the fly")
    if streaming:
        if model_name is None or corpus is None:
            raise LlmriError("--model and --corpus go together: the model runs on the corpus")
        if epochs is not None:
            raise LlmriError("--epochs: training with --model is sized by --tokens, not epochs")
        settings = StreamSettings(**common, tokens=2**22 if tokens is None else tokens, buffer_tokens=buffer_tokens,
                                  batch_tokens=batch_tokens, max_length=max_length, checkpoint_every=checkpoint_every)
    else:
        TrainSettings(**common)
        epochs = 1 if epochs is None else epochs
        if epochs < 1:
            raise LlmriError(f"--epochs must be a positive integer, got {epochs}")
    out_p = _check_out(out, "choose another --out")
    resuming = streaming and out_p.is_dir() and [p.name for p in out_p.iterdir()] == [CHECKPOINT]
    if not resuming:
        out_p = _sae_out(out, overwrite)
    one = sites[0] if len(sites) == 1 else sites
    target = targets[0] if targets and len(sites) == 1 else targets
    del common["flags"]
    with _one_line_warnings():
        if streaming:
            result = _train_streaming(model_name, corpus, one, target, settings, out_p / CHECKPOINT, device, download)
        else:
            from ..store import Scan

            result = train_sae(Scan.open(scan_dir), one, target_site=target, epochs=epochs, device=device,
                               progress=None, **common)
    saes = {sites[0]: result} if len(sites) == 1 else result
    for name, sae in saes.items():
        folder = out_p if len(saes) == 1 else out_p / name
        sae.save(folder)
        w = sae.metadata["window"]
        click.echo(f"{sae!r}: {folder}  (explained variance {w['ev']:.3f}, L0 {w['l0']:.1f} over the last "
                   f"{w['steps']} steps, {w['tokens']:,} tokens; dead {w['dead']:.1%}; {sae.metadata['precision']})")
    (out_p / CHECKPOINT).unlink(missing_ok=True)


def _train_streaming(model_name, corpus, sites, targets, settings, checkpoint, device, download):
    """Check the sites against the model's config and read the corpus, then load the model and train."""
    from ..corpus import Corpus
    from ..model import config_n_layers, load_model, model_folder
    from ..sae.settings import site_pairs
    from ..sae.stream import check_stream_sites, train_sae_stream

    names, tnames = site_pairs(sites, targets)
    folder = model_folder(model_name)
    check_stream_sites(names + tnames, config_n_layers(folder) if folder is not None else None)
    docs = Corpus.from_path(corpus)
    model = load_model(model_name, device=device, download=download)
    return train_sae_stream(model, docs, sites, targets, settings=settings, checkpoint=checkpoint, device=device,
                            progress=None)


@sae_group.command("eval")
@click.argument("sae_dir")
@click.option("--model", "model_name", required=True, help="The model the SAE was trained on.")
@click.option("--corpus", required=True, help="Held-out texts: a corpus folder or CSV/TSV/JSONL file.")
@click.option("--batch-tokens", type=int, default=4096, show_default=True)
@click.option("--device", default="auto", show_default=True)
@_dtype_option
@click.option("--download", is_flag=True)
def sae_eval_cmd(sae_dir, model_name, corpus, batch_tokens, device, dtype, download):
    """Evaluate the SAE in SAE_DIR spliced into the model: L0, explained variance, CE loss score, KL.
    The numbers, and the precision they were computed in, are also written to SAE_DIR/eval.json.
    SAE_DIR may name a shipped SAE as MODEL/SITE (default-decoder/resid.16)."""
    from ..corpus import Corpus
    from ..model import load_model
    from ..precision import check_dtype
    from ..sae import SAE, evaluate_sae
    from ..sae.collection import is_shipped, sae_folder
    from ..store import atomic_write_json, json_safe

    check_dtype(dtype, "--dtype")
    if batch_tokens < 1:
        raise LlmriError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    folder = sae_folder(sae_dir, "SAE_DIR")
    sae = SAE.load(folder)
    docs = Corpus.from_path(corpus)
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    m = evaluate_sae(sae, model, docs, batch_tokens=batch_tokens, progress=None)
    scalars = {k: v for k, v in m.items() if k != "feature_density"}
    if is_shipped(folder):   # its files are hashed: nothing is written beside them
        click.echo(f"{sae_dir} ships with llmri: eval.json not written (its held-out figures are in set.json)", err=True)
    else:
        atomic_write_json(folder / "eval.json", json_safe(scalars))   # an undefined score is null
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
    """Feature browser of SAE_DIR over a Scan: map, searchable table, dashboards, categories.
    SAE_DIR may name a shipped SAE as MODEL/SITE (default-decoder/resid.16)."""
    from ..explain.results import find_explanations
    from ..model import load_model
    from ..report import build_feature_browser
    from ..sae import SAE, feature_activations
    from ..sae.collection import is_shipped, sae_folder, shipped_metrics
    from ..store import Scan

    if cards < 0:
        raise LlmriError(f"--cards must be >= 0, got {cards}")
    _check_explanations(explanations, " --sae")
    folder = sae_folder(sae_dir, "SAE_DIR")
    sae = SAE.load(folder)
    explanations = list(explanations) or find_explanations(folder, sae.site, "feature")
    scan = Scan.open(scan_dir)
    model = load_model(model_name, device=device, dtype="float32") if model_name else None
    feats = feature_activations(sae, scan, progress=None)
    metrics = shipped_metrics(folder) if is_shipped(folder) else None
    ev = folder / "eval.json"
    if metrics is None and ev.is_file():
        metrics = json.loads(ev.read_text())
    out = Path(out) if out else _default_out(sae_dir, "report")
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
    """Generate from PROMPT with one SAE feature clamped to each --value, side by side.
    SAE_DIR may name a shipped SAE as MODEL/SITE (default-decoder/resid.16)."""
    from ..model import load_model
    from ..sae import load_sae
    from ..sae.clamp import clamp_generations, resolve_values

    sae = load_sae(sae_dir, "SAE_DIR")
    for v in values:  # every value checked before the model loads
        resolve_values(sae, {feature: v})
    model = load_model(model_name, device=device, dtype="float32", download=download)
    rows = clamp_generations(model, sae, feature, values, prompt, max_new_tokens=max_new_tokens, progress=None)
    for label, text in rows:
        click.echo(f"[{label}] {text}")
    if out:
        from ..report import clamp_page

        path = clamp_page(rows, out, sae, feature, prompt, max_new_tokens=max_new_tokens)
        click.echo(f"steer: {path}")

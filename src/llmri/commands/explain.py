"""``llmri explain``: explanations of neurons or SAE features by a language model, scored by
simulation, detection and fuzzing."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from .options import _check_out, _check_ray, _ray_options, _specs


@click.command("explain")
@click.argument("scan_dir")
@click.option("--site", required=True, help="A site with token-level records, e.g. mlp.10.")
@click.option("--neurons", "neuron_spec", default=None, help="Neurons: top:K, START:END or 3,5,9.")
@click.option("--sae", default=None, help="An SAE folder, or a shipped one as MODEL/SITE (default-decoder/resid.16): explain "
              "its features instead of neurons.")
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
@click.option("--convention", type=click.Choice(["llmri", "delphi"]), default="llmri", show_default=True,
              help="How detection and fuzzing answers count: llmri (a missing answer is 'no', an absent class is "
              "left out) or delphi (missing answers dropped, an absent class scores 0).")
@click.option("--simulator", type=click.Choice(["pmi", "all_at_once"]), default=None,
              help="Simulation scoring: pmi (default with --backend local) or all_at_once (Bills et al.; "
                   "the only one with --backend openai).")
@click.option("--no-baseline", is_flag=True, help="Skip the random-explanation baseline.")
@click.option("--out", required=True, help="Folder for the tables, the page and the call cache.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_ray_options
def explain_cmd(scan_dir, site, neuron_spec, sae, feature_spec, backend, model_name, base_url, api_key_env,
                completion_logprobs, scorers, style, simulator, convention, no_baseline, out, device, seed, ray_mode, workers, gpus_per_worker):
    """Explain neurons (or SAE features) of the Scan in SCAN_DIR with a language model and score
    the explanations by simulation, detection and fuzzing."""
    from ..explain import Explainer, LocalLM, OpenAICompatible, parse_units
    from ..explain.examples import _check_token_site
    from ..explain.explainer import _check_scorers
    from ..explain.scoring import SCORERS
    from ..report.explain import explain
    from ..sites import parse_site
    from ..store import Scan

    engine = _check_ray(ray_mode, workers, gpus_per_worker)
    if sae and neuron_spec:
        raise LlmriError("--neurons and --sae exclude each other; with --sae choose --features")
    spec = feature_spec if sae else neuron_spec
    if spec is None:
        raise LlmriError("--features is required with --sae" if sae else "--neurons is required (e.g. top:50)")
    units = parse_units(spec)
    names = _specs(scorers)
    try:
        _check_scorers(names)
    except LlmriError:
        raise LlmriError(f"--scorers {scorers!r}: choose from {', '.join(SCORERS)}") from None
    if parse_site(site)[1] is None:
        raise LlmriError(f"--site {site!r}: give one layer, e.g. {site}.10")
    if backend == "openai" and (not base_url or not model_name):
        raise LlmriError("--backend openai needs --base-url and --model-name")
    if backend == "openai" and simulator == "pmi":
        raise LlmriError("--simulator pmi needs --backend local (a server gives no log-probabilities of arbitrary words)")
    _check_out(out, "choose another output folder")
    scan = Scan.open(scan_dir)
    try:
        _check_token_site(scan, site)
    except LlmriError:
        raise LlmriError(f"site {site!r} has no token-level records in {scan_dir}; token sites: "
                         f"{', '.join(scan.token_sites) or 'none (rescan with --token-sites)'}") from None
    sae_dir = _sae_folder(sae) if sae else None
    encoder = _load_sae(sae_dir) if sae else None
    if backend == "openai":
        be = OpenAICompatible(base_url, model_name, api_key_env=api_key_env, completion_logprobs=completion_logprobs)
    else:
        be = LocalLM(model_name or "default-decoder", device=device)
    res = explain(scan, site, units, Explainer(be, style=style, seed=seed, simulator=simulator, convention=convention),
                  scorers=names, encoder=encoder,
                  meta={"sae": str(Path(sae_dir).resolve())} if sae else None,
                  baseline=not no_baseline, out=out, progress=None,
                  engine=engine or "local")
    cols = [c for c in res.table.columns if c in ("unit", "simulation_score", "simulation_baseline",
                                                 "detection_balanced_accuracy", "fuzzing_balanced_accuracy", "explanation")]
    click.echo(res.table[cols].to_string(index=False, max_colwidth=60, float_format=lambda v: f"{v:.3f}"))
    click.echo("\n" + usage_line(res.info["stats"]))
    click.echo(f"explanations: {Path(out) / 'explanations.csv'}")


def usage_line(st: dict) -> str:
    """What the run cost: the calls made and the tokens they spent; answers from the cache cost
    nothing now (the tokens they took when made are shown apart)."""
    line = (f"{st['calls']} calls, {st['spent_prompt_tokens']} prompt and {st['spent_completion_tokens']} "
            "completion tokens spent")
    if st["cache_hits"]:
        line += (f"; {st['cache_hits']} answers from the cache (they took {st['prompt_tokens'] - st['spent_prompt_tokens']}"
                 f" prompt and {st['completion_tokens'] - st['spent_completion_tokens']} completion tokens when made)")
    return line


def _sae_folder(spec) -> Path:
    """The folder ``--sae`` names: an SAE folder or a shipped ``MODEL/SITE`` (default-decoder/resid.16)."""
    try:
        from ..sae.collection import sae_folder
    except ImportError:
        raise LlmriError("--sae needs llmri's SAE module (llmri.sae), which this installation lacks") from None
    return sae_folder(spec, "--sae")


def _load_sae(path):
    """An SAE folder (llmri/SAELens or sparsify layout) as an encoder with ``encode``."""
    from ..sae import SAE

    return SAE.load(path)

"""``llmri generate`` and ``llmri steer``: a decoder's answers, and its answers steered along the
direction between two categories of a Scan."""

from __future__ import annotations

import click

from ..errors import LlmriError
from .options import _dtype_option, _floats, _specs


@click.command("generate")
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
@_dtype_option
@click.option("--download", is_flag=True)
def generate_cmd(prompts, model_name, max_new_tokens, chat, system, sample, temperature, seed, as_json, device,
                 dtype, download):
    """Generate a continuation (an answer, with the chat template) for each of PROMPTS."""
    import json

    from ..generate import check_prompts, generate
    from ..model import load_model

    check_prompts(prompts, "PROMPTS")
    if sample and not temperature > 0:
        raise LlmriError(f"--temperature must be > 0 when sampling, got {temperature}")
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    outs = generate(model, list(prompts), max_new_tokens=max_new_tokens, chat=chat, system=system,
                    do_sample=sample, temperature=temperature, seed=seed, progress=None)
    if as_json:
        click.echo(json.dumps([{"prompt": p, "generation": g} for p, g in zip(prompts, outs)],
                              ensure_ascii=False, indent=1))
    else:
        for i, (p, g) in enumerate(zip(prompts, outs)):
            click.echo(("" if i == 0 else "\n") + (f"> {p}\n" if len(prompts) > 1 else "") + g)


@click.command("steer")
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
@_dtype_option
@click.option("--download", is_flag=True)
def steer_cmd(prompts, scan_dir, positive, negative, layer, out, model_name, alphas, site, mode, probe_layer,
              max_new_tokens, seed, device, dtype, download):
    """Steer generation of PROMPTS with the Scan's POSITIVE-minus-NEGATIVE vector at several strengths."""
    from ..generate import check_alphas, check_prompts, steer_sweep
    from ..model import load_model
    from ..report import output_folder, steer_page
    from ..store import Scan

    values = check_alphas(_floats(alphas, "--alphas"), "--alphas")
    check_prompts(prompts, "PROMPTS")
    scan = Scan.open(scan_dir)
    pos = _specs(positive)
    neg = _specs(negative)
    for flag, names in (("--positive", pos), ("--negative", neg)):
        missing = [c for c in names if c not in scan.label_names] or ([] if names else [""])
        if missing:
            raise LlmriError(f"{flag}: category {missing[0]!r} is not in {scan_dir} "
                             f"(categories: {', '.join(scan.label_names)})")
    for flag, L in (("--layer", layer), ("--probe-layer", probe_layer)):
        if L is not None and L not in scan.layers(site):
            raise LlmriError(f"{flag} {L}: {scan_dir} holds {site} at layers "
                             f"{', '.join(map(str, scan.layers(site))) or 'none'}")
    out = output_folder(out)  # checked before the model loads
    model = load_model(model_name, device=device, dtype=dtype, download=download)
    df = steer_sweep(model, scan, pos, neg, layer, values, list(prompts), site=site, mode=mode,
                     max_new_tokens=max_new_tokens, probe_layer=probe_layer, seed=seed, progress=None)
    click.echo(df.to_string(index=False, max_colwidth=70, float_format=lambda v: f"{v:.3f}"))
    path = steer_page(df, out, model.name, scan_dir, alphas=values, max_new_tokens=max_new_tokens, seed=seed)
    click.echo(f"steering: {path}")

"""What a graph is built from, checked: the SAEs (one kind per graph, sorted by layer, fitted to the
model), the explain runs of their features, and the prompt and target tokens."""

from __future__ import annotations

from pathlib import Path

from ..batches import chat_prompt
from ..errors import LlmriError
from ..explain.results import ExplainResult, find_explanations, unit_explanations
from ..sae.collection import load_saes as collect
from ..sites import parse_site


def load_saes(saes, model=None) -> list:
    """The SAEs of ``saes`` (an SAE, a list or dict of them, an SAE folder, or a folder of SAE
    folders) sorted by layer, checked against ``model`` when given: residual-stream SAEs (site
    ``resid.L``) or transcoders (``mlp_in.L -> mlp_out.L``), one kind per graph."""
    saes = collect(saes)
    if not saes:
        raise LlmriError("saes: no SAEs given")
    for i, sae in enumerate(saes):
        if sae.site is None:
            raise LlmriError(f"saes[{i}]: the SAE does not say which site it reads; set sae.site, e.g. 'resid.6'")
        if sae.is_transcoder:
            (k_in, l_in), (k_out, l_out) = parse_site(sae.site), parse_site(sae.target_site)
            if (k_in, k_out) != ("mlp_in", "mlp_out") or l_in != l_out:
                raise LlmriError(f"saes[{i}]: transcoder {sae.site} -> {sae.target_site}: attribute takes "
                                 "transcoders from mlp_in.L to mlp_out.L of the same block")
        elif parse_site(sae.site)[0] != "resid":
            raise LlmriError(f"saes[{i}]: site {sae.site!r}: attribute takes residual-stream SAEs (site resid.L) "
                             "or transcoders (mlp_in.L -> mlp_out.L)")
    if len({s.is_transcoder for s in saes}) > 1:
        first = next(s for s in saes if s.is_transcoder)
        other = next(s for s in saes if not s.is_transcoder)
        raise LlmriError(f"saes: a mix of residual-stream SAEs ({other.site}) and transcoders ({first.site} -> "
                         f"{first.target_site}); one graph takes one kind")
    sites = [s.site for s in saes]
    dup = sorted({s for s in sites if sites.count(s) > 1})
    if dup:
        raise LlmriError(f"saes: two SAEs for site {dup[0]}")
    saes.sort(key=lambda s: parse_site(s.site)[1])
    if model is not None:
        _check_fit(saes, model)
    return saes


def _check_fit(saes, model) -> None:
    width = model.module.get_input_embeddings().weight.shape[1]
    for sae in saes:
        sae.check_fits(model)
        if sae.d_in != width or sae.d_out != width:
            raise LlmriError(f"the SAE of {sae.site} reads vectors of width {sae.d_in} (writes {sae.d_out}), but "
                             f"{model.name}'s residual stream has width {width}: it belongs to another model")
        if sae.model_name and model.name and Path(str(sae.model_name)).name != Path(str(model.name)).name:
            raise LlmriError(f"the SAE of {sae.site} was trained on {sae.model_name}, not {model.name}")


def feature_explanations(saes, explanations=None) -> dict[str, dict[int, dict]]:
    """``{site: {feature: explain row}}`` for the features of ``saes`` (from :func:`load_saes`, or
    their site names):
    the rows of ``llmri explain --sae`` runs (explanation, simulation score, baselines).

    ``explanations``: an explain output folder or its ``explain.json``, an
    :class:`llmri.ExplainResult`, or a list of them (one per SAE site, or several; a later run wins
    for a feature both explain). None: the runs found beside each SAE folder, as ``llmri sae
    report`` finds them (:func:`llmri.explain.find_explanations`). A run of neurons, of a site
    without an SAE here, or of another SAE of the same site is a one-line error naming it.

    >>> llmri.circuits.feature_explanations(saes, "runs/explain-resid.8")["resid.8"][123]["explanation"]  # doctest: +SKIP
    """
    folders = {s: None for s in saes if isinstance(s, str)}
    folders.update({s.site: getattr(s, "folder", None) for s in saes if not isinstance(s, str)})
    if explanations is None:
        found = {site: find_explanations(f, site, "feature") for site, f in folders.items() if f is not None}
        return {site: unit_explanations(runs, site, "feature") for site, runs in found.items() if runs}
    groups: dict[str, list] = {}
    for run in explanations if isinstance(explanations, (list, tuple)) else [explanations]:
        if isinstance(run, ExplainResult):
            res, where = run, "an explain run"
        else:
            folder = Path(run).parent if Path(run).name == "explain.json" else Path(run)
            if not (folder / "explanations.csv").is_file() or not (folder / "explain.json").is_file():
                raise LlmriError(f"explanations: {run}: not an explain output folder (no explanations.csv and "
                                 f"explain.json); run llmri explain --sae with --out {folder}")
            res, where = ExplainResult.load(folder), str(run)
        site, kind = res.info.get("site"), res.info.get("unit_kind", "neuron")
        if kind != "feature":
            raise LlmriError(f"explanations: {where}: explains the {kind}s of {site}, not SAE features")
        if site not in folders:
            raise LlmriError(f"explanations: {where}: explains the features of {site}, but the SAEs are at "
                             f"{', '.join(folders)}")
        made_from, ours = res.info.get("sae"), folders[site]
        if made_from and ours is not None and Path(made_from).resolve() != Path(ours).resolve():
            raise LlmriError(f"explanations: {where}: explains the features of the SAE in {made_from}, "
                             f"not of the one in {ours}")
        groups.setdefault(site, []).append(res)
    return {site: unit_explanations(runs, site, "feature") for site, runs in groups.items()}


def _explained(row: dict | None) -> tuple[str, float]:
    """(explanation, simulation score) of an explain row, ("", nan) without one."""
    if not row:
        return "", float("nan")
    score = row.get("simulation_score")
    return str(row.get("explanation") or ""), float("nan") if score is None else float(score)


def _one_token(tok, text, what: str = "target") -> int:
    if not isinstance(text, str) or not text:
        raise LlmriError(f"{what}: give a non-empty string such as ' Paris', got {text!r}")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise LlmriError(f"{what} {text!r} is not one token: the tokenizer splits it into {len(ids)} tokens "
                         f"{pieces}; give a single token, e.g. {pieces[0]!r}" if ids else
                         f"{what} {text!r} is not one token: the tokenizer produces no token for it")
    return int(ids[0])


def _target_ids(tok, target) -> list[int] | None:
    """The target's token ids: one (its log-probability), a pair (their logit difference), or None
    (the model's top token, found later)."""
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise LlmriError(f"target: give one token or a pair (' Paris', ' London'), got {len(target)} items")
        tgt = [_one_token(tok, t, "target") for t in target]
        if tgt[0] == tgt[1]:
            raise LlmriError(f"target: the pair {tuple(target)!r} is one token twice")
        return tgt
    if target is None:
        return None
    return [_one_token(tok, target, "target")]


def _prompt_ids(model, prompt, chat: bool) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmriError(f"prompt: give a non-empty string, got {prompt!r}")
    text = chat_prompt(model, prompt, True) if chat else prompt
    ids = model.tokenizer(text, add_special_tokens=not chat)["input_ids"]
    if not ids:
        raise LlmriError("prompt: the tokenizer produced no tokens")
    if len(ids) > model.max_length:
        raise LlmriError(f"prompt: {len(ids)} tokens exceed the model's limit of {model.max_length}")
    return list(ids)

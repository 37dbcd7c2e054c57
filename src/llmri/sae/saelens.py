"""SAELens' ``cfg.json`` flags, read as SAELens 6.54 reads them (``sae_lens/saes/*.py``,
``loading/pretrained_sae_loaders.py``): each flag that changes what ``encode`` or ``decode`` computes
is either one llmri computes the same way (the caller folds ``rescale_acts_by_decoder_norm`` into the
weights) or refused here in one line naming the flag. No torch; SAELens itself is not needed.

The flags of SAELens 6.54's inference configs, and what llmri does with each:

==============================  ==============================================================
``architecture``                standard, topk, jumprelu (and llmri's batchtopk), transcoder and
                                jumprelu_transcoder are read; gated, abstopk, skip transcoders,
                                temporal and matching_pursuit are refused
``apply_b_dec_to_input``        read (transcoders: never, as SAELens' Transcoder ignores it)
``k``                           read (topk)
``rescale_acts_by_decoder_norm``  folded into the weights, exactly (topk)
``normalize_activations``       "none" read; the others (a scale computed per input, or one to
                                fold first) refused
``reshape_activations``         "hook_z" read on an ``attn_z`` site (llmri's heads are already
                                concatenated), refused elsewhere
``metadata.hook_head_index``    refused (llmri has no site for one head)
``dtype``                       read as float32
``finetuning_scaling_factor``   (pre-6.0) true refused: SAELens 6 no longer applies it
``activation_fn``/``_kwargs``   (pre-6.0) topk with ``k`` read as a TopK SAE, as SAELens maps it
==============================  ==============================================================
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LlmriError

SAELENS_FORMAT = "6.54.0"  # the SAELens version whose cfg.json llmri writes (and tests against)
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"  # SAELens' folder layout (as llmri.sae.model)
READ = ("standard", "topk", "jumprelu", "batchtopk", "transcoder", "jumprelu_transcoder")
_REFUSED = {"gated": "gated SAEs (a separate gate path)", "abstopk": "AbsTopK (top-k by |pre|)",
            "skip_transcoder": "skip transcoders (an extra W_skip path)",
            "jumprelu_skip_transcoder": "skip transcoders (an extra W_skip path)",
            "temporal": "temporal SAEs (attention over past tokens)",
            "matching_pursuit": "matching-pursuit SAEs (iterative encoding)"}


def _version(text) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:3]) or (0,)


def saelens_flags(cfg: dict, where: Path) -> dict:
    """``cfg`` with SAELens' defaults filled in (pre-6.0 configs upgraded as SAELens does), every
    flag checked; ``where`` (the cfg.json path) is named in each error."""
    cfg = dict(cfg)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not version or _version(version) < (6,):
        if cfg.get("finetuning_scaling_factor"):
            raise LlmriError(f"{where}: finetuning_scaling_factor is true: a pre-6.0 decoder scaling that "
                             "SAELens 6 no longer applies; fold it into W_dec first")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg.get("activation_fn") == "topk" and kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
    arch = cfg.setdefault("architecture", "standard")
    if arch in _REFUSED:
        raise LlmriError(f"{where}: architecture {arch!r}: llmri does not compute {_REFUSED[arch]}; it reads "
                         f"{', '.join(READ)}")
    if arch not in READ:
        raise LlmriError(f"{where}: architecture {arch!r} is not supported (llmri reads {', '.join(READ)})")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        hint = {"expected_average_only_in": "fold the scaling into the weights first (SAELens: "
                                            "fold_activation_norm_scaling_factor)",
                "covariance_whitening": "fold the whitening into the weights first (SAELens: "
                                        "fold_activation_whitening)"}.get(
            norm, "it rescales each input by its own norm, which llmri's encode does not")
        raise LlmriError(f"{where}: normalize_activations {norm!r} is not supported; {hint}")
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    if (cfg.get("reshape_activations") or "none") != "none":
        site = meta.get("llmri_site") or hook
        if cfg["reshape_activations"] != "hook_z" or not (str(site).endswith("hook_z") or str(site).startswith("attn_z.")):
            raise LlmriError(f"{where}: reshape_activations {cfg['reshape_activations']!r} on {hook!r}: llmri "
                             "reads hook_z (attention heads concatenated, site attn_z.L) only")
    head = meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index")))
    if head is not None:
        raise LlmriError(f"{where}: hook_head_index {head!r}: the SAE reads one attention head; llmri's sites "
                         "hold every head (attn_z.L)")
    if cfg.get("rescale_acts_by_decoder_norm") and arch != "topk":
        raise LlmriError(f"{where}: rescale_acts_by_decoder_norm with architecture {arch!r}: SAELens applies it "
                         "to topk only")
    transcoder = arch.endswith("transcoder")
    cfg["apply_b_dec_to_input"] = False if transcoder else bool(cfg.get("apply_b_dec_to_input", True))
    cfg["architecture"] = {"transcoder": "standard", "jumprelu_transcoder": "jumprelu"}.get(arch, arch)
    return cfg


# TransformerLens hook names (blocks.L.<hook>) of llmri's sites, and the block offset of each:
# hook_resid_pre of block L is the stream before block L (resid.L), hook_resid_post after it (resid.L+1).
# blocks.L.hook_mlp_in and hook_resid_mid (the stream before ln2) have no llmri site and stay names.
_TL_HOOKS = {"hook_resid_pre": ("resid", 0), "hook_resid_post": ("resid", 1), "hook_mlp_out": ("mlp_out", 0),
             "hook_attn_out": ("attn_out", 0), "mlp.hook_post": ("mlp", 0), "attn.hook_z": ("attn_z", 0),
             "attn.hook_pattern": ("attn", 0), "ln2.hook_normalized": ("mlp_in", 0)}
_TL_OF_SITE = {kind: hook for hook, (kind, shift) in _TL_HOOKS.items() if shift == 0}


def site_from_hook_name(name):
    """llmri's site for a TransformerLens hook name (``blocks.8.hook_resid_pre`` -> ``resid.8``,
    ``blocks.8.hook_resid_post`` -> ``resid.9``, ``blocks.3.ln2.hook_normalized`` -> ``mlp_in.3``);
    other names (an llmri site already, or a hook without one) are kept as they are."""
    if not isinstance(name, str):
        return None
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m and m.group(2) in _TL_HOOKS:
        kind, shift = _TL_HOOKS[m.group(2)]
        return f"{kind}.{int(m.group(1)) + shift}"
    return name


def hook_name_of_site(site):
    """The TransformerLens hook name of an llmri site (``resid.8`` -> ``blocks.8.hook_resid_pre``,
    ``mlp_in.3`` -> ``blocks.3.ln2.hook_normalized``), the inverse of :func:`site_from_hook_name`;
    a name that is not an llmri site is kept as it is."""
    if not isinstance(site, str):
        return None
    m = re.match(r"^([a-z_]+)\.(\d+)$", site)
    if m and m.group(1) in _TL_OF_SITE:
        return f"blocks.{m.group(2)}.{_TL_OF_SITE[m.group(1)]}"
    return site

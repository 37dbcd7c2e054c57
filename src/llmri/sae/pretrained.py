"""Released SAEs from the local Hugging Face cache (``SAE.from_pretrained``), offline by default.

A release is resolved through SAELens' registry when ``sae-lens`` is installed
(``sae_lens.loading.pretrained_saes_directory``: release -> Hugging Face repository, SAE id ->
folder in it, config overrides and norm scaling factors), or is a repository id itself
(``"org/repo"``, the SAE id then being the folder in it). The files, ``<folder>/cfg.json`` and
``<folder>/sae_weights.safetensors`` (SAELens' layout), are read from the cache the hub client
keeps (``models--org--repo/snapshots/<commit>/...``); a file not there is a one-line error naming
the repository and the file, unless ``download=True``. Releases SAELens converts from other
layouts (Gemma Scope's, Llama Scope's, ...) are refused by the name of the converter.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LlmriError
from ..store import read_json_object
from .saelens import CFG_FILE, WEIGHTS_FILE, site_from_hook_name


def _lookup(release: str, sae_id: str):
    """(repository, folder, config overrides, norm scaling factor or None) of a release's SAE."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        registry = {}
    else:
        registry = get_pretrained_saes_directory()
    if release in registry:
        entry = registry[release]
        if entry.conversion_func is not None:
            raise LlmriError(f"SAE.from_pretrained: release {release!r} is stored in the {entry.conversion_func!r} "
                             "layout, which llmri does not convert; load it with SAELens and save_model() it")
        if sae_id not in entry.saes_map:
            some = ", ".join(list(entry.saes_map)[:3])
            raise LlmriError(f"SAE.from_pretrained: release {release!r} has no SAE {sae_id!r} (e.g. {some})")
        scale = (entry.norm_scaling_factor or {}).get(sae_id)
        return entry.repo_id, entry.saes_map[sae_id], dict(entry.config_overrides or {}), scale
    if release.count("/") == 1 and all(release.split("/")):
        return release, sae_id, {}, None
    where = "SAELens' registry" if registry else "SAELens' registry (pip install sae-lens to use it)"
    raise LlmriError(f"SAE.from_pretrained: release {release!r} is not in {where} and is not a Hugging Face "
                     "repository id (org/repo)")


def _cached(repo: str, filename: str, download: bool) -> Path:
    from huggingface_hub import constants, try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename)
    if isinstance(hit, str):
        return Path(hit)
    if download:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    raise LlmriError(f"SAE.from_pretrained: {filename} of {repo} is not in the local Hugging Face cache "
                     f"({constants.HF_HUB_CACHE}); download it (download=True, or huggingface-cli download "
                     f"{repo} {filename})")


def from_pretrained(cls, release: str, sae_id: str, device: str = "cpu", download: bool = False):
    """The SAE ``sae_id`` of ``release`` from the local Hugging Face cache (see the module), an
    instance of ``cls`` (``llmri.SAE``, which calls this)."""
    from safetensors.torch import load_file

    if not isinstance(release, str) or not isinstance(sae_id, str) or not release or not sae_id:
        raise LlmriError(f"SAE.from_pretrained: give a release and an SAE id as strings, got {release!r}, {sae_id!r}")
    repo, folder, overrides, scale = _lookup(release, sae_id)
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    cfg_path = _cached(repo, prefix + CFG_FILE, download)
    weights = _cached(repo, prefix + WEIGHTS_FILE, download)
    cfg = {**read_json_object(cfg_path), **overrides}
    # SAELens folds a release's norm scaling factor into an expected_average_only_in SAE
    # (fold_activation_norm_scaling_factor: W_enc * s, W_dec / s, b_dec / s), which then reads raw inputs
    fold = scale is not None and cfg.get("normalize_activations") == "expected_average_only_in"
    if fold:
        cfg["normalize_activations"] = "none"
    sae = cls._from_saelens(cfg, load_file(str(weights)), cfg_path)
    if fold:
        import torch

        with torch.no_grad():
            sae.W_enc.mul_(scale)
            sae.W_dec.div_(scale)
            sae.b_dec.div_(scale)
    if sae.site is None:
        sae.site = sae.target_site = site_from_hook_name(sae_id)
    sae.folder = cfg_path.parent
    sae.metadata.update(release=release, sae_id=sae_id, repo_id=repo)
    return sae.to(device).eval()

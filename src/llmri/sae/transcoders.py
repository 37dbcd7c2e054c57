"""circuit-tracer's per-layer transcoders as llmri SAEs (``mlp_in.L -> mlp_out.L``), so
``llmri.attribute`` runs over transcoders trained elsewhere.

circuit-tracer 0.5.0 keeps a transcoder set as a ``config.yaml`` (``model_kind: transcoder_set``,
``feature_input_hook``, ``feature_output_hook``, ``scan``, and ``transcoders``: one file per layer,
a path or an ``hf://org/repo/file?revision=R`` reference; without ``transcoders``, the
``layer_{L}.safetensors`` files beside it) and one safetensors file per layer, as
``SingleLayerTranscoder.to_safetensors`` writes it: ``W_enc [d_transcoder, d_model]`` (it encodes
``x @ W_enc.T + b_enc``), ``W_dec [d_transcoder, d_model]``, ``b_enc``, ``b_dec`` and, for JumpReLU,
``activation_function.threshold`` (``pre * (pre > t)``, llmri's JumpReLU); ReLU otherwise. No
``b_dec`` is subtracted from the input. A skip connection (``W_skip``) and cross-layer transcoders
are refused in one line. ``hf://`` files are read from the local Hugging Face cache, never fetched.

>>> tcs = load_transcoders("gemma-transcoders/config.yaml")   # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LlmriError
from .model import SAE

CONFIG = "config.yaml"
_INPUT_HOOKS = ("mlp.hook_in", "ln2.hook_normalized")  # the MLP input, after its norm (not hook_mlp_in: before it)
_OUTPUT_HOOKS = ("hook_mlp_out",)  # what the MLP adds to the residual stream (after any post-norm)


def is_transcoder_set(path) -> bool:
    """True for a circuit-tracer transcoder-set folder (``config.yaml`` beside ``layer_*`` files) or config."""
    path = Path(path)
    return path.name == CONFIG and path.is_file() or (path / CONFIG).is_file()


def load_transcoders(source) -> list[SAE]:
    """The transcoders of a circuit-tracer transcoder set: its ``config.yaml`` or the folder holding
    it; one SAE per layer, ``mlp_in.L -> mlp_out.L``, in layer order."""
    import yaml

    path = Path(source)
    config_path = path if path.name == CONFIG else path / CONFIG
    if not config_path.is_file():
        raise LlmriError(f"{source}: not a circuit-tracer transcoder set (no {CONFIG})")
    try:
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        cfg = None
    if not isinstance(cfg, dict):
        raise LlmriError(f"{config_path}: not a YAML mapping of settings")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise LlmriError(f"{config_path}: model_kind {kind!r}: llmri reads per-layer transcoders "
                         "(transcoder_set), not cross-layer ones")
    for key, allowed in (("feature_input_hook", _INPUT_HOOKS), ("feature_output_hook", _OUTPUT_HOOKS)):
        if cfg.get(key) not in allowed:
            raise LlmriError(f"{config_path}: {key} {cfg.get(key)!r}: llmri reads transcoders from the MLP's "
                             f"input ({', '.join(_INPUT_HOOKS)}) to its output ({', '.join(_OUTPUT_HOOKS)})")
    files = _layer_files(cfg, config_path)
    meta = {"source": "circuit-tracer", "scan": cfg.get("scan")}
    return [_transcoder(f, layer, cfg.get("model_name"), meta) for layer, f in enumerate(files)]


def _layer_files(cfg: dict, config_path: Path) -> list[Path]:
    if "transcoders" not in cfg:
        found = {int(m.group(1)): p for p in config_path.parent.iterdir()
                 if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
        if not found:
            raise LlmriError(f"{config_path}: no transcoders list and no layer_L.safetensors beside it")
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            raise LlmriError(f"{config_path.parent}: no layer_{missing[0]}.safetensors (every layer from 0 needs one)")
        return [found[i] for i in range(len(found))]
    paths = cfg["transcoders"]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise LlmriError(f"{config_path}: transcoders must be a list of file paths, one per layer")
    out = []
    for p in paths:
        f = _hf_cached(p, config_path) if p.startswith("hf://") else Path(p)
        f = f if f.is_absolute() else config_path.parent / f
        if not f.is_file():
            raise LlmriError(f"{config_path}: transcoder file {p} does not exist")
        out.append(f)
    return out


def _hf_cached(uri: str, config_path: Path) -> Path:
    """The local Hugging Face cache's copy of ``hf://org/repo/file?revision=R``, never downloaded."""
    from urllib.parse import parse_qs, urlparse

    from huggingface_hub import try_to_load_from_cache

    parsed = urlparse(uri)
    parts = parsed.path.lstrip("/").split("/", 1)
    if len(parts) != 2 or not parsed.netloc:
        raise LlmriError(f"{config_path}: {uri!r} is not an hf://org/repo/file reference")
    repo, filename = f"{parsed.netloc}/{parts[0]}", parts[1]
    revision = parse_qs(parsed.query).get("revision", [None])[0]
    hit = try_to_load_from_cache(repo, filename, revision=revision)
    if not isinstance(hit, str):
        raise LlmriError(f"{config_path}: {filename} of {repo} is not in the local Hugging Face cache; "
                         f"download it first (huggingface-cli download {repo} {filename})")
    return Path(hit)


def _transcoder(path: Path, layer: int, model_name, meta: dict) -> SAE:
    import torch
    from safetensors.torch import load_file

    try:
        w = load_file(str(path))
    except Exception as e:  # a truncated or foreign file: say which
        raise LlmriError(f"{path}: not a safetensors file ({type(e).__name__})") from None
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in w]
    if missing:
        raise LlmriError(f"{path}: missing tensors {missing} (circuit-tracer's W_enc, W_dec, b_enc, b_dec)")
    if "W_skip" in w:
        raise LlmriError(f"{path}: W_skip: a skip transcoder (an extra linear path from input to output), "
                         "which llmri does not compute")
    d_sae, d_in = w["W_enc"].shape
    d_out = w["W_dec"].shape[1]
    thr = w.get("activation_function.threshold")
    sae = SAE(int(d_in), int(d_sae), arch="jumprelu" if thr is not None else "relu", k=None,
              site=f"mlp_in.{layer}", target_site=f"mlp_out.{layer}", model_name=model_name,
              metadata=dict(meta, file=str(path)), apply_b_dec_to_input=False, d_out=int(d_out))
    with torch.no_grad():
        sae.W_enc.copy_(w["W_enc"].float().T)
        sae.W_dec.copy_(w["W_dec"].float())
        sae.b_enc.copy_(w["b_enc"].float())
        sae.b_dec.copy_(w["b_dec"].float())
        if thr is not None:
            sae.threshold.copy_(thr.float().expand(int(d_sae)))
    return sae.eval()

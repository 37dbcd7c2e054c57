"""The SAE object: encoder/decoder weights in SAELens' layout, saving and loading.

An SAE (or a transcoder, which reads one site and predicts another) holds

* ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``;
* ``threshold [d_sae]`` for JumpReLU (and BatchTopK, which is stored as JumpReLU after
  training, as SAELens does);
* ``k`` for TopK.

``encode(x) = act((x - b_dec) @ W_enc + b_enc)`` (``b_dec`` is not subtracted for a
transcoder), ``decode(f) = f @ W_dec + b_dec``. Both are plain torch and differentiable.

On disk an SAE is SAELens' layout: ``cfg.json`` + ``sae_weights.safetensors``; training
statistics (per-feature maximum and firing density) go to ``feature_stats.safetensors`` beside
them so SAELens still loads the folder. EleutherAI ``sparsify`` folders (``cfg.json`` +
``sae.safetensors``) load too. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import LlmriError
from ..sites import block_of, layer_count, parse_site
from ..store import atomic_write_json, check_out_folder, json_safe, read_safetensors, whole_folder, write_shard
from .saelens import SAELENS_FORMAT, hook_name_of_site, saelens_flags, site_from_hook_name

ARCHS = ("batchtopk", "topk", "jumprelu", "relu")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
STATS_FILE = "feature_stats.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
EVAL_FILE = "eval.json"   # written by llmri sae eval beside the SAE
# SAELens' architecture names for ours (BatchTopK infers with a threshold, i.e. as JumpReLU).
_TO_SAELENS = {"batchtopk": "jumprelu", "topk": "topk", "jumprelu": "jumprelu", "relu": "standard"}
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
_TRANSCODERS = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}


class SAE(nn.Module):
    """A sparse autoencoder or transcoder on one site of a model.

    ``arch`` is ``batchtopk`` (default), ``topk``, ``jumprelu`` or ``relu`` (ReLU with an L1
    penalty in training). ``site`` is where it reads (``resid.6``); ``target_site`` where it
    writes, when it is a transcoder (``mlp_out.6``), else the same site.

    >>> sae = SAE(d_in=576, d_sae=4096, arch="topk", k=32, site="resid.15")   # doctest: +SKIP
    >>> f = sae.encode(x); x_hat = sae.decode(f)                             # doctest: +SKIP
    """

    def __init__(self, d_in: int, d_sae: int, arch: str = "batchtopk", k: int | None = 32,
                 site: str | None = None, target_site: str | None = None, model_name: str | None = None,
                 metadata: dict | None = None, apply_b_dec_to_input: bool | None = None,
                 d_out: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise LlmriError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
        for name, v in (("d_in", d_in), ("d_sae", d_sae)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise LlmriError(f"{name} must be a positive integer, got {v!r}")
        if arch in ("topk", "batchtopk") and (not isinstance(k, (int, np.integer)) or not 0 < k <= d_sae):
            raise LlmriError(f"k must be an integer in 1..{d_sae} (n_latents) for arch {arch!r}, got {k!r}")
        self.d_in, self.d_sae, self.arch = int(d_in), int(d_sae), arch
        self.d_out = int(d_out) if d_out is not None else self.d_in  # a transcoder may change width
        self.k = int(k) if k is not None and arch in ("topk", "batchtopk") else None
        self.site = site
        self.target_site = target_site or site
        self.model_name = model_name
        self.metadata = dict(metadata or {})
        self.folder: Path | None = None  # the folder it was loaded from (SAE.load), where explain runs are found
        # SAEs subtract b_dec before encoding; transcoders (input and output differ) do not.
        self.apply_b_dec_to_input = (not self.is_transcoder if apply_b_dec_to_input is None
                                     else bool(apply_b_dec_to_input))
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise LlmriError(f"apply_b_dec_to_input needs d_out == d_in, got {self.d_out} != {self.d_in}")
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, self.d_out))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.threshold = nn.Parameter(torch.zeros(d_sae), requires_grad=False)
        # Training statistics (not weights): largest activation seen and firing density per feature.
        self.register_buffer("feature_max", torch.zeros(d_sae), persistent=False)
        self.register_buffer("feature_density", torch.zeros(d_sae), persistent=False)

    # ------------------------------------------------------------------ forward
    @property
    def is_transcoder(self) -> bool:
        return self.target_site != self.site

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(x - b_dec) @ W_enc + b_enc`` (no ``b_dec`` for transcoders)."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations, as used at inference."""
        if self.arch == "relu":
            return torch.relu(pre)
        if self.arch == "topk":
            return topk_relu(pre, self.k)
        # jumprelu, and batchtopk after training: keep what exceeds the per-feature threshold
        return pre * (pre > self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of site values ``x [..., d_in]``."""
        if x.shape[-1] != self.d_in:
            raise LlmriError(f"the SAE reads vectors of width {self.d_in} (site {self.site}), "
                             f"got width {x.shape[-1]}")
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec``."""
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def __repr__(self) -> str:
        kind = f"transcoder {self.site} -> {self.target_site}" if self.is_transcoder else f"site {self.site}"
        k = f", k={self.k}" if self.k else ""
        return f"SAE({self.arch}, d_in={self.d_in}, d_sae={self.d_sae}{k}, {kind})"

    def check_fits(self, model) -> None:
        """Fail with one line when this SAE's sites do not exist in ``model`` (an llmri Model).

        >>> sae.check_fits(llmri.load_model("default-decoder"))          # doctest: +SKIP
        """
        for what, site in (("site", self.site), ("target site", self.target_site)):
            if site is None:
                raise LlmriError("the SAE does not say which site it reads (cfg.json metadata.hook_name); "
                                 "set sae.site, e.g. 'resid.6'")
            kind, layer = parse_site(site)
            count = layer_count(kind, model.n_layers)
            if layer is None or not 0 <= layer < count:
                raise LlmriError(f"the SAE's {what} {site!r} does not exist in {model.name} "
                                 f"({model.n_layers} blocks)")
        if self.is_transcoder and block_of(self.site) > block_of(self.target_site):
            raise LlmriError(f"transcoder {self.site} -> {self.target_site}: the input site must come before "
                             "the site it predicts")

    # ------------------------------------------------------------------ disk
    def cfg(self) -> dict:
        """The ``cfg.json`` content: SAELens' inference fields plus llmri's own under ``llmri``.
        ``metadata`` names the format's SAELens version (without it SAELens reads the file as a
        pre-6.0 config and drops ``hook_name`` and ``model_name``) and the site's TransformerLens
        hook name (``resid.8`` -> ``blocks.8.hook_resid_pre``), which SAELens keeps on load."""
        arch = _TO_SAELENS[self.arch]
        if self.is_transcoder and not self.apply_b_dec_to_input and arch in _TRANSCODERS:
            arch = _TRANSCODERS[arch]  # SAELens' transcoder classes: no b_dec on the input, d_out wide
        cfg = {"architecture": arch, "d_in": self.d_in, "d_sae": self.d_sae,
               **({"d_out": self.d_out} if self.d_out != self.d_in or self.is_transcoder else {}),
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"model_name": self.model_name, "hook_name": hook_name_of_site(self.site),
                            **({"hook_name_out": hook_name_of_site(self.target_site)} if self.is_transcoder else {}),
                            "sae_lens_version": SAELENS_FORMAT,
                            "llmri_site": self.site, "llmri_target_site": self.target_site},
               "llmri": dict(self.metadata, arch=self.arch, site=self.site, target_site=self.target_site)}
        if self.arch == "topk":
            cfg["k"] = self.k
        if self.k:
            cfg["llmri"]["k"] = self.k
        return cfg

    def save(self, folder, weights_dtype: str = "float32") -> Path:
        """Write ``cfg.json``, ``sae_weights.safetensors`` and ``feature_stats.safetensors`` into
        ``folder``, all three or none (:func:`llmri.store.whole_folder`: a killed or failed save
        leaves the folder as it was; the old SAE's ``eval.json`` goes, other files stay). SAELens
        reads it with ``SAE.load_from_disk(folder)``. ``weights_dtype="float16"`` stores the weights
        in half the bytes (what llmri's shipped feature sets use); they load as float32 either way."""
        if weights_dtype not in ("float32", "float16"):
            raise LlmriError(f"weights_dtype {weights_dtype!r} is not one of float32, float16")
        folder = check_out_folder(folder, advice=None)
        tensors = {n: getattr(self, n).detach().float().cpu().numpy()
                   for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if self.arch in ("jumprelu", "batchtopk"):
            tensors["threshold"] = self.threshold.detach().float().cpu().numpy()
        if weights_dtype == "float16":
            big = max(float(np.abs(v).max(initial=0.0)) for v in tensors.values())
            if not big < 65504:
                raise LlmriError(f"weights_dtype float16: a weight of magnitude {big:.3g} does not fit in "
                                 "float16 (largest 65504); save in float32")
            tensors = {n: v.astype(np.float16) for n, v in tensors.items()}
        with whole_folder(folder, drop=(EVAL_FILE, SPARSIFY_WEIGHTS)) as tmp:
            write_shard(tmp / WEIGHTS_FILE, tensors)
            write_shard(tmp / STATS_FILE, {"feature_max": self.feature_max.float().cpu().numpy(),
                                           "feature_density": self.feature_density.float().cpu().numpy()})
            atomic_write_json(tmp / CFG_FILE, json_safe(self.cfg()))
        return folder

    @classmethod
    def load(cls, folder, device: str | torch.device = "cpu") -> "SAE":
        """Load an llmri/SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) or an
        EleutherAI sparsify folder (``cfg.json`` + ``sae.safetensors``)."""
        folder = Path(folder)
        cfg_path = folder / CFG_FILE
        if not folder.is_dir():
            raise LlmriError(f"{folder}: no such SAE folder")
        if not cfg_path.is_file():
            raise LlmriError(f"{folder}: not an SAE folder (no {CFG_FILE}); expected SAELens' layout "
                             f"({CFG_FILE} + {WEIGHTS_FILE}) or sparsify's ({CFG_FILE} + {SPARSIFY_WEIGHTS})")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LlmriError(f"{cfg_path}: not valid JSON") from None
        if not isinstance(cfg, dict):
            raise LlmriError(f"{cfg_path}: expected a JSON object")
        if (folder / WEIGHTS_FILE).is_file():
            w = read_safetensors(folder / WEIGHTS_FILE, "pt")
            _check_against_cfg(cfg, w, cfg_path, folder / WEIGHTS_FILE)
            sae = cls._from_saelens(cfg, w, cfg_path)
        elif (folder / SPARSIFY_WEIGHTS).is_file():
            w = read_safetensors(folder / SPARSIFY_WEIGHTS, "pt")
            _check_against_cfg(cfg, w, cfg_path, folder / SPARSIFY_WEIGHTS)
            sae = cls._from_sparsify(cfg, w, cfg_path)
        else:
            raise LlmriError(f"{folder}: not an SAE folder (no {WEIGHTS_FILE} or {SPARSIFY_WEIGHTS})")
        if (folder / STATS_FILE).is_file():
            stats = read_safetensors(folder / STATS_FILE, "pt")
            for name in ("feature_max", "feature_density"):
                if name in stats:
                    if tuple(stats[name].shape) != (sae.d_sae,):
                        raise LlmriError(f"{folder / STATS_FILE}: {name} has shape {list(stats[name].shape)}, "
                                         f"but the SAE has {sae.d_sae} latents; the folder is inconsistent")
                    getattr(sae, name).copy_(stats[name])
        sae.folder = folder.resolve()
        return sae.to(device).eval()

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, device: str = "cpu", download: bool = False) -> "SAE":
        """A released SAE from the local Hugging Face cache, offline unless ``download=True``: the
        release resolved through SAELens' registry (when ``sae-lens`` is installed) or a repository
        id with the SAE's folder as ``sae_id`` (:mod:`llmri.sae.pretrained`).

        >>> sae = SAE.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")   # doctest: +SKIP
        """
        from .pretrained import from_pretrained

        return from_pretrained(cls, release, sae_id, device=device, download=download)

    @classmethod
    def _from_saelens(cls, cfg: dict, w: dict, where: Path) -> "SAE":
        """An SAE of a SAELens ``cfg.json`` and weights, each config flag of SAELens 6.54 that changes
        ``encode``/``decode`` handled (folded into the weights) or refused in one line naming it."""
        ours = cfg.get("llmri") or {}
        meta = cfg.get("metadata") or {}
        cfg = saelens_flags(cfg, where)
        arch = ours.get("arch") or _FROM_SAELENS[cfg["architecture"]]
        missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in w]
        if missing:
            raise LlmriError(f"{where.parent / WEIGHTS_FILE}: missing tensors {missing}")
        d_in, d_sae = w["W_enc"].shape
        d_out = w["W_dec"].shape[1]
        hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
        site = ours.get("site") or meta.get("llmri_site") or site_from_hook_name(hook)
        target = (ours.get("target_site") or meta.get("llmri_target_site")
                  or site_from_hook_name(meta.get("hook_name_out")) or site)
        if arch == "batchtopk" and "threshold" not in w:
            arch = "topk"
        k = ours.get("k") or cfg.get("k")
        sae = cls(int(d_in), int(d_sae), arch=arch, k=int(k) if k is not None else None, site=site,
                  target_site=target, model_name=meta.get("model_name") or cfg.get("model_name"),
                  metadata={k2: v for k2, v in ours.items() if k2 not in ("arch", "site", "target_site", "k")},
                  apply_b_dec_to_input=cfg["apply_b_dec_to_input"], d_out=int(d_out))
        W_enc, b_enc, W_dec = (w[n].float() for n in ("W_enc", "b_enc", "W_dec"))
        if cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens' TopK ranks pre * |W_dec_i| and decodes f / |W_dec_i| @ W_dec: the same map as
            # plain TopK with the norms folded in (its fold_W_dec_norm), so encode and decode agree exactly.
            norm = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * norm, b_enc * norm, W_dec / norm.clamp(min=1e-8)[:, None]
        with torch.no_grad():
            for n, v in (("W_enc", W_enc), ("W_dec", W_dec), ("b_enc", b_enc), ("b_dec", w["b_dec"])):
                getattr(sae, n).copy_(v)
            if "threshold" in w:
                # SAELens' JumpReLU is relu(pre) * (pre > t): llmri's pre * (pre > t) with t at least 0
                sae.threshold.copy_(w["threshold"] if ours else w["threshold"].float().clamp(min=0))
        return sae

    @classmethod
    def _from_sparsify(cls, cfg: dict, w: dict, where: Path) -> "SAE":
        if "encoder.weight" not in w or "W_dec" not in w:
            raise LlmriError(f"{where.parent / SPARSIFY_WEIGHTS}: not a sparsify SAE (no encoder.weight/W_dec)")
        d_sae, d_in = w["encoder.weight"].shape
        d_out = w["W_dec"].shape[1]
        k = int(cfg.get("k", 32))
        site = cfg.get("llmri_site") or cfg.get("hookpoint")
        # sparsify subtracts b_dec before encoding, except for transcoders
        sae = cls(int(d_in), int(d_sae), arch="topk", k=min(k, int(d_sae)), site=site,
                  metadata={"source": "sparsify"}, apply_b_dec_to_input=not cfg.get("transcode", False),
                  d_out=int(d_out))
        with torch.no_grad():
            sae.W_enc.copy_(w["encoder.weight"].T)
            sae.b_enc.copy_(w["encoder.bias"])
            sae.W_dec.copy_(w["W_dec"])
            sae.b_dec.copy_(w["b_dec"])
        return sae


def _check_against_cfg(cfg: dict, w: dict, cfg_path: Path, weights: Path) -> None:
    """One line naming the file when ``cfg.json`` and the weights beside it disagree (widths, k),
    or the weights disagree among themselves: such a folder is never loaded."""
    if "encoder.weight" in w:          # sparsify: encoder.weight [d_sae, d_in], W_dec [d_sae, d_out]
        d_sae, d_in = w["encoder.weight"].shape
        shapes = {"encoder.bias": (d_sae,), "W_dec": (d_sae, None), "b_dec": (w["W_dec"].shape[1],) if "W_dec" in w else None}
        said = {"d_in": cfg.get("d_in"), "d_sae": cfg.get("num_latents") or None}
    elif "W_enc" in w:                 # SAELens: W_enc [d_in, d_sae], W_dec [d_sae, d_out]
        if w["W_enc"].dim() != 2:
            raise LlmriError(f"{weights}: W_enc has shape {list(w['W_enc'].shape)}, expected [d_in, d_sae]")
        d_in, d_sae = w["W_enc"].shape
        d_out = w["W_dec"].shape[-1] if "W_dec" in w else None
        shapes = {"b_enc": (d_sae,), "W_dec": (d_sae, None), "b_dec": (d_out,), "threshold": (d_sae,)}
        said = {"d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"), "d_out": cfg.get("d_out")}
        if said["d_out"] is not None and d_out is not None and said["d_out"] != d_out:
            raise LlmriError(f"{cfg_path}: says d_out {said['d_out']}, but {weights.name} decodes to width {d_out}; "
                             "the folder is inconsistent")
    else:
        return                          # missing tensors: the reader names them
    for name, want in shapes.items():
        if name in w and want is not None and (w[name].dim() != len(want) or any(
                x is not None and x != y for x, y in zip(want, w[name].shape))):
            raise LlmriError(f"{weights}: {name} has shape {list(w[name].shape)}, which does not fit "
                             f"{d_sae} latents of width {d_in}; the file is inconsistent")
    for key, actual in (("d_in", d_in), ("d_sae", d_sae)):
        if said[key] is not None and said[key] != actual:
            raise LlmriError(f"{cfg_path}: says {key} {said[key]!r}, but {weights.name} holds "
                             f"{'latents' if key == 'd_sae' else 'inputs of width'} {actual}; the folder is inconsistent")
    for k in (cfg.get("k"), (cfg.get("llmri") or {}).get("k")):
        if k is not None and "encoder.weight" not in w and (not isinstance(k, int) or not 0 < k <= d_sae):
            raise LlmriError(f"{cfg_path}: k {k!r} is not an integer in 1..{d_sae} (the latents in {weights.name})")


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest pre-activations of each row (then ReLU), zero the rest."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


def batch_topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK (Bussmann et al. 2024): keep the ``k * rows`` largest ReLU pre-activations of the
    whole batch, so each row may use more or fewer than ``k`` features."""
    flat = torch.relu(pre).reshape(-1)
    n = min(k * pre.reshape(-1, pre.shape[-1]).shape[0], flat.numel())
    vals, idx = flat.topk(n)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)

"""evaluate_sae: reconstruction and downstream metrics with the SAE spliced into the running model.

Names and definitions follow SAELens' evaluation (``sae_lens/evals.py``) and the papers it
follows (Bricken et al. 2023; Gao et al. 2024, section 4.1; Rajamanoharan et al. 2024):

* ``l0``: mean number of active features per token.
* ``explained_variance``: 1 - FVU, FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all
  tokens (x is the target site's value; for a transcoder, the value it predicts).
* ``cossim``, ``l2_ratio``: per-token cosine(x, x_hat) and ||x_hat|| / ||x||, averaged.
* ``ce_loss_score = (CE_zero_ablation - CE_with_sae) / (CE_zero_ablation - CE_clean)``: 1 when
  splicing the SAE in loses nothing, 0 when it is as bad as zeroing the site.
* ``kl_div_with_sae`` / ``kl_div_with_ablation``: mean KL(clean next-token distribution ||
  spliced one) per token; ``kl_div_score = (KL_ablation - KL_sae) / KL_ablation``.
* ``dead_fraction``: features that never fire on the evaluated tokens; ``dense_fraction``:
  features firing on more than ``dense_threshold`` of them; ``feature_density`` per feature.
* ``precision``: what the forward passes, SAE included, computed in (``float32``, ``bf16-mixed``,
  ...), from the model's precision and the ``"sae-eval"`` policy (:func:`llmri.model.computing`);
  the sums behind every metric are float32 or float64 either way.

The site is read and replaced through ``llmri.sites.hooks``, at every real token.
"""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from ..batches import Batches
from ..corpus import Corpus
from ..errors import LlmriError
from ..model import as_model, is_causal_lm
from ..precision import computing, precision_used
from ..sites import hooks
from .model import SAE


def _texts(corpus) -> list[str]:
    if isinstance(corpus, str) or hasattr(corpus, "__fspath__"):
        corpus = Corpus.from_path(corpus)
    if isinstance(corpus, Corpus):
        return list(corpus.texts)
    if isinstance(corpus, (list, tuple)) and corpus and all(isinstance(t, str) for t in corpus):
        return list(corpus)
    raise LlmriError("corpus: expected an llmri.Corpus, a corpus path or a non-empty list of texts")


def _check_width(sae: SAE, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[-1] != sae.d_in or y.shape[-1] != sae.d_out:
        raise LlmriError(f"the SAE reads width {sae.d_in} and writes width {sae.d_out}, but sites "
                         f"{sae.site}/{sae.target_site} of this model have widths {x.shape[-1]}/{y.shape[-1]}: "
                         "the SAE belongs to another model or site")


def _nll(logits: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihoods at the ``valid`` positions."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)[valid]


def evaluate_sae(sae: SAE, model, corpus, batch_tokens: int = 4096, dense_threshold: float = 0.1,
                 skip_first: bool | None = None, progress: bool | None = None) -> dict:
    """Metrics of ``sae`` on ``corpus`` (an llmri.Corpus, a path or a list of texts), with the
    SAE spliced into ``model`` at its site. CE and KL metrics need a causal LM (else NaN).
    ``skip_first`` (default: on for decoders) leaves each text's first token, the attention
    sink, unspliced and out of the reconstruction metrics, as training leaves it out.

    >>> m = llmri.evaluate_sae(sae, model, "heldout/")          # doctest: +SKIP
    >>> m["explained_variance"], m["ce_loss_score"], m["l0"]      # doctest: +SKIP
    """
    if not isinstance(sae, SAE):
        raise LlmriError(f"sae: expected an llmri.SAE (SAE.load(folder)), got {type(sae).__name__}")
    if not 0 < dense_threshold <= 1:
        raise LlmriError(f"dense_threshold must be in (0, 1], got {dense_threshold!r}")
    texts = _texts(corpus)
    model = as_model(model)
    sae.check_fits(model)
    lm = is_causal_lm(model)
    if skip_first is None:
        skip_first = bool(model.adapter.causal)
    dev = model.device
    sae = sae.to(dev).eval()
    batches = Batches(model, texts, batch_tokens)
    state: dict = {}

    def read(site):
        def fn(x):
            state[site] = x
            return None
        return fn

    def splice(x):  # the target site's value replaced by the SAE's reconstruction
        src = state[sae.site] if sae.is_transcoder else x
        new = sae(src.float()).to(x.dtype)
        if skip_first:
            new[state["rows"], state["first"]] = x[state["rows"], state["first"]]
        return new

    read_fns = {sae.site: read(sae.site), sae.target_site: read(sae.target_site)}
    splice_fns = {sae.target_site: splice}
    if sae.is_transcoder:
        splice_fns[sae.site] = read(sae.site)
    zero_fns = {sae.target_site: lambda x: torch.zeros_like(x)}

    acc = dict(sse=0.0, sum_y=torch.zeros(sae.d_out, dtype=torch.float64, device=dev), sum_y2=0.0, n=0,
               cos=0.0, l2=0.0, l0=0.0, ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl_sae=0.0, kl_zero=0.0, n_ce=0)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=dev)
    bar = tqdm(batches.batches, desc="evaluating SAE", unit="batch", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    with torch.no_grad(), computing(model, "sae-eval"):
        for _, kw, mask in bar:
            state["rows"] = torch.arange(mask.shape[0], device=mask.device)
            state["first"] = mask.int().argmax(1)
            real = mask
            if skip_first:  # the reconstruction metrics leave the first token out
                mask = mask.clone()
                mask[state["rows"], state["first"]] = False
            with hooks(model.module, model.adapter, read_fns):
                clean = model.module(**kw) if lm else model.base(**kw)
            x, y = state[sae.site][mask].float(), state[sae.target_site][mask].float()
            _check_width(sae, x, y)
            f = sae.encode(x)
            y_hat = sae.decode(f)
            acc["sse"] += float((y - y_hat).pow(2).sum())
            acc["sum_y"] += y.double().sum(0)
            acc["sum_y2"] += float(y.double().pow(2).sum())
            acc["n"] += y.shape[0]
            acc["cos"] += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).sum())
            acc["l2"] += float((y_hat.norm(dim=-1) / y.norm(dim=-1).clamp(min=1e-12)).sum())
            active = f > 0
            acc["l0"] += float(active.sum())
            fired += active.sum(0).double()
            if not lm:
                continue
            with hooks(model.module, model.adapter, splice_fns):
                spliced = model.module(**kw).logits
            with hooks(model.module, model.adapter, zero_fns):
                zeroed = model.module(**kw).logits
            valid = real[:, 1:] & real[:, :-1]
            ids = kw["input_ids"]
            acc["ce_clean"] += float(_nll(clean.logits, ids, valid).sum())
            acc["ce_sae"] += float(_nll(spliced, ids, valid).sum())
            acc["ce_zero"] += float(_nll(zeroed, ids, valid).sum())
            p_clean = torch.log_softmax(clean.logits[:, :-1].float(), -1)[valid]
            for key, other in (("kl_sae", spliced), ("kl_zero", zeroed)):
                q = torch.log_softmax(other[:, :-1].float(), -1)[valid]
                acc[key] += float((p_clean.exp() * (p_clean - q)).sum())
            acc["n_ce"] += int(valid.sum())
    n = max(acc["n"], 1)
    mean_y = acc["sum_y"] / n
    total = acc["sum_y2"] - n * float(mean_y.pow(2).sum())
    density = (fired / n).float().cpu().numpy()
    out = dict(precision=precision_used(model, "sae-eval"), n_tokens=acc["n"], l0=acc["l0"] / n,
               explained_variance=1 - acc["sse"] / max(total, 1e-30), mse=acc["sse"] / n,
               cossim=acc["cos"] / n, l2_ratio=acc["l2"] / n,
               dead_fraction=float((density == 0).mean()), dense_fraction=float((density > dense_threshold).mean()))
    nan = float("nan")
    if lm and acc["n_ce"]:
        m = acc["n_ce"]
        ce_clean, ce_sae, ce_zero = acc["ce_clean"] / m, acc["ce_sae"] / m, acc["ce_zero"] / m
        kl_sae, kl_zero = acc["kl_sae"] / m, acc["kl_zero"] / m
        denom = ce_zero - ce_clean
        out.update(ce_loss_without_sae=ce_clean, ce_loss_with_sae=ce_sae, ce_loss_with_ablation=ce_zero,
                   ce_loss_score=(ce_zero - ce_sae) / denom if abs(denom) > 1e-12 else nan,
                   kl_div_with_sae=kl_sae, kl_div_with_ablation=kl_zero,
                   kl_div_score=(kl_zero - kl_sae) / kl_zero if kl_zero > 1e-12 else nan)
    else:
        out.update({k: nan for k in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
                                     "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score")})
    out["feature_density"] = density
    return out

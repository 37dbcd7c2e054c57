"""Several SAEs trained side by side on one stream of token batches, whatever makes the batches.

Training from a Scan (``train``) and from a model and a corpus (``stream``) differ only in where
the activations come from. Both hand a :class:`Session` a first sample (which sets each site's
input scale, its outlier limit and the decoder bias), then batches of raw activations, one array
per site with the rows aligned (row i is the same token at every site), and finally ask it for the
SAEs. The session keeps one :class:`~llmri.sae.trainer._Trainer` per site, its progress figures,
and its state for checkpoints.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import LlmriError
from .model import SAE
from .settings import TrainSettings, too_few_steps
from .trainer import MIXED, _initialise, _Trainer

INIT_TOKENS = 65536   # tokens of the first sample that set each site's scale and outlier limit
B_DEC_TOKENS = 8192   # tokens of the first sample that set b_dec (geometric median or mean)


def drop_outliers(data: dict[str, torch.Tensor], max_norm: dict[str, float]) -> dict[str, torch.Tensor]:
    """The rows of every site's array whose norm stays within ``max_norm`` at every site that has
    one (rows are tokens, aligned across sites, so one token goes from all of them)."""
    if not max_norm:
        return data
    keep = None
    for name, limit in max_norm.items():
        ok = data[name].norm(dim=1) <= limit
        keep = ok if keep is None else keep & ok
    return data if bool(keep.all()) else {name: a[keep] for name, a in data.items()}


class Session:
    """One trainer per ``(site, target)`` pair; ``needed`` is every site a batch must hold."""

    def __init__(self, settings: TrainSettings, names: list[str], tnames: list[str], dims: dict[str, int],
                 scales: dict[str, float], max_norm: dict[str, float], device: torch.device, precision: str,
                 model_name: str | None, total_steps: int, total_tokens: int,
                 sample: dict[str, torch.Tensor] | None = None):
        self.settings, self.names, self.tnames = settings, names, tnames
        self.needed = list(dict.fromkeys(names + tnames))
        self.scales, self.max_norm, self.precision = scales, max_norm, precision
        self.total_steps, self.total_tokens = total_steps, total_tokens
        s = settings
        self.dead_tokens = s.dead_tokens or max(s.batch_size, min(10_000_000, total_tokens // 10))
        self.trainers = []
        gen = torch.Generator().manual_seed(s.seed)
        for name, tname in zip(names, tnames):
            sae = SAE(dims[name], s.n_latents, arch=s.arch, k=s.k if s.arch in ("topk", "batchtopk") else None,
                      site=name, target_site=tname, model_name=model_name, d_out=dims[tname])
            if sample is not None:  # a new run (a resumed one restores every weight instead)
                _initialise(sae, sample[tname][:B_DEC_TOKENS].float() * scales[tname], s.b_dec_init, gen)
            lr = s.lr if s.lr is not None else 2e-4 / math.sqrt(s.n_latents / 2 ** 14)
            aux_k = s.aux_k if s.aux_k is not None else min(512, max(1, dims[tname] // 2), s.n_latents)
            self.trainers.append(_Trainer(sae.to(device), lr, total_steps, s.l1_coefficient, s.l0_coefficient,
                                          s.bandwidth, aux_k, s.aux_coefficient, self.dead_tokens,
                                          torch.bfloat16 if precision == MIXED else None))

    @classmethod
    def start(cls, settings: TrainSettings, names: list[str], tnames: list[str], sample: dict[str, torch.Tensor],
              device: torch.device, precision: str, model_name: str | None, total_steps: int,
              total_tokens: int) -> Session:
        """A new session, initialised from ``sample`` (raw float32 activations of the first data):
        the outlier limits from its first ``INIT_TOKENS`` tokens, then, without the outliers, each
        site's scale (mean norm ``sqrt(d)``) and each SAE's initial weights. Warns (one line) when
        ``total_steps`` are few for the width asked."""
        s = settings
        needed = list(dict.fromkeys(names + tnames))
        max_norm = ({name: float(s.skip_outliers * np.median(np.linalg.norm(sample[name][:INIT_TOKENS].numpy(),
                                                                             axis=1)))
                     for name in names} if s.skip_outliers is not None else {})
        sample = drop_outliers(sample, max_norm)
        scales = {}
        for name in needed:
            mean_norm = float(sample[name][:INIT_TOKENS].float().norm(dim=1).mean())
            if not math.isfinite(mean_norm):
                raise LlmriError(f"site {name}: the activations are not finite")
            scales[name] = math.sqrt(sample[name].shape[1]) / mean_norm if s.normalize and mean_norm > 0 else 1.0
        dims = {name: int(sample[name].shape[1]) for name in needed}
        session = cls(s, names, tnames, dims, scales, max_norm, device, precision, model_name, total_steps,
                      total_tokens, sample)
        warning = too_few_steps(total_steps, total_tokens, s)
        if warning:
            warnings.warn(warning, stacklevel=4)
        return session

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimiser step of every SAE on ``batch`` (raw activations, outliers already left out)."""
        for tr, name, tname in zip(self.trainers, self.names, self.tnames):
            dev = tr.sae.W_enc.device
            x = batch[name].to(dev, torch.float32) * self.scales[name]
            y = x if tname == name else batch[tname].to(dev, torch.float32) * self.scales[tname]
            tr.step(x, y)

    def postfix(self) -> dict[str, str]:
        """The progress bar's figures over the recent window, averaged over the SAEs (dead: the largest share)."""
        stats = [tr.window_stats() for tr in self.trainers]
        return dict(l0=f"{np.mean([w['l0'] for w in stats]):.1f}", ev=f"{np.mean([w['ev'] for w in stats]):.3f}",
                    dead=f"{max(w['dead'] for w in stats):.2f}")

    def finish(self, **meta) -> dict[str, SAE]:
        """The trained SAEs (on the CPU, raw units), their metadata completed with ``meta``."""
        s, out = self.settings, {}
        for tr, name, tname in zip(self.trainers, self.names, self.tnames):
            sae = tr.finish(self.scales[name], self.scales[tname])
            sae.metadata.update(
                arch=s.arch, n_tokens=self.total_tokens, batch_size=s.batch_size, lr=tr.lr, seed=s.seed,
                precision=self.precision, b_dec_init=s.b_dec_init, skip_first=bool(s.skip_first),
                max_norm=self.max_norm.get(name), aux_k=tr.aux_k, aux_coefficient=s.aux_coefficient,
                dead_tokens=self.dead_tokens,
                normalization=dict(method="expected_average_only_in" if s.normalize else "none",
                                   input_scale=self.scales[name], target_scale=self.scales[tname],
                                   folded_into_weights=True),
                final=dict(tr.last), window=tr.window_stats(), **meta,
                **({"l1_coefficient": s.l1_coefficient} if s.arch == "relu" else {}),
                **({"l0_coefficient": s.l0_coefficient, "bandwidth": s.bandwidth} if s.arch == "jumprelu" else {}))
            out[name] = sae.cpu()
        return out

    # ------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors (``SITE/NAME``) and JSON scalars of every trainer, plus the scales and limits."""
        tensors, trainers = {}, {}
        for tr, name in zip(self.trainers, self.names):
            t, scalars = tr.state()
            tensors.update({f"{name}/{k}": v for k, v in t.items()})
            trainers[name] = scalars
        dims = {n: int(tr.sae.W_enc.shape[0]) for tr, n in zip(self.trainers, self.names)}
        dims.update({t: int(tr.sae.W_dec.shape[1]) for tr, t in zip(self.trainers, self.tnames)})
        return tensors, dict(trainers=trainers, scales=self.scales, max_norm=self.max_norm, dims=dims)

    def restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        for tr, name in zip(self.trainers, self.names):
            prefix = name + "/"
            tr.restore({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                       state["trainers"][name])

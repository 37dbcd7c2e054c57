"""One SAE's training state and step, shared by training from a Scan (``train``) and from a model
and a corpus (``stream``).

Choices, with their sources:

* Architectures: TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"),
  BatchTopK (Bussmann et al. 2024: the top ``k * batch`` activations of the whole batch; at
  inference a single threshold, the running mean of the smallest kept activation, so it is
  saved as JumpReLU as SAELens does), JumpReLU (Rajamanoharan et al. 2024: straight-through
  estimators with a rectangle kernel for the threshold and an L0 penalty; thresholds start at
  0.1 with bandwidth 0.05 on the normalised scale, because the paper's 0.001 barely moves in
  short runs; the log-thresholds learn 10 times faster than the weights, since Adam moves a
  parameter by about the learning rate per step and a threshold has to travel from 0.1 to the
  scale of the activations within the run), ReLU + L1 (Bricken
  et al. 2023; the penalty weighted by decoder norms as in Anthropic's April 2024 update).
* Decoder rows are kept at unit norm: the gradient component parallel to each row is removed
  before the step and the rows are renormalised after it.
* Encoder initialised as the decoder's transpose (Gao et al.); ``b_dec`` at the geometric
  median (Weiszfeld's algorithm) or the mean of a sample of the data.
* Dead latents: the AuxK auxiliary loss of Gao et al. (appendix A.2). Latents that have not
  fired for ``dead_tokens`` tokens reconstruct the residual error with their top ``aux_k``
  pre-activations, weighted by ``aux_coefficient`` (1/32). We use it rather than resampling
  (Bricken et al.) because it is an ordinary differentiable loss term: no surgery on weights
  and optimiser state in the middle of a run, nothing that depends on which batch happens to
  be in memory when the resampling fires, so streaming and determinism are unaffected.
* Inputs are scaled so that the mean norm is ``sqrt(d_in)`` (SAELens'
  ``expected_average_only_in``); after training the scale is folded into the weights, so the
  saved SAE reads raw activations, and the factor is recorded in the config.
* Adam (eps 6.25e-10 as Gao et al.), learning rate ``2e-4 / sqrt(n_latents / 2**14)`` unless
  given, gradient norm clipped to 1, linear decay to 0 over the last 20% of steps.
* Precision (``dtype``): ``bf16-mixed`` computes the dense matrix products (the encoder, and the
  decoder of ReLU/JumpReLU) under ``torch.autocast(bfloat16)``; the weights, Adam's moments, the
  gradients they receive, the losses and the statistics (firing counts, dead latents, explained
  variance) stay float32. TopK's decoder is a gather of k rows per token, which gains nothing
  from bf16, so it stays float32. ``auto`` picks bf16-mixed on hardware with native bfloat16
  where ``AUTO_BF16["sae-train"]`` says the measured fidelity holds (benchmarks/bf16_sae.py).
"""

from __future__ import annotations

import collections
import math

import torch
import torch.nn.functional as F

from ..precision import AUTO_BF16, MIXED, native_bf16
from .model import SAE
from .settings import check_training_dtype

THRESHOLD_LR_MULT = 10.0
SELECT_BLOCK = 8  # entries per block in BatchTopK's selection (_select_by_blocks)
# The summary of a run (``sae.metadata["window"]``, what ``llmri sae train`` prints) pools the last
# tenth of its steps, at least 2 and at most 100, weighted by tokens: the last batch alone may hold
# a handful of tokens, whose explained variance around their own mean says nothing.
WINDOW_STEPS = (2, 100)
SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


# ---------------------------------------------------------------- JumpReLU estimators
class _JumpReLU(torch.autograd.Function):
    """z * H(z - t); d/dz = H(z - t); d/dt = -(t / eps) K((z - t) / eps), K the rectangle kernel."""

    @staticmethod
    def forward(ctx, z, t, eps):
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return z * (z > t)

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        eps = ctx.eps
        kernel = ((z - t).abs() < eps / 2).to(z.dtype) / eps
        return g * (z > t), (-(t * kernel) * g).sum(0), None


class _Step(torch.autograd.Function):
    """H(z - t); d/dz = 0; d/dt = -(1 / eps) K((z - t) / eps)."""

    @staticmethod
    def forward(ctx, z, t, eps):
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        kernel = ((z - t).abs() < ctx.eps / 2).to(z.dtype) / ctx.eps
        return None, (-kernel * g).sum(0), None


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of ``x``."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp(min=1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * max(float(y.norm()), 1.0):
            return y_new
        y = y_new
    return y


def _pre_acts(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """``sae.pre_acts(x)`` written as ``x @ W_enc + (b_enc - b_dec @ W_enc)``: the same value, but
    ``b_dec``'s gradient is then a matrix-vector product instead of a third [batch, d_sae] product.
    Under bf16 autocast the bias is added in bfloat16, so the [batch, d_sae] result, and the
    gradient that flows back into the product, stay bfloat16 (no float32 copy of either)."""
    h = x @ sae.W_enc
    bias = sae.b_enc - sae.b_dec @ sae.W_enc if sae.apply_b_dec_to_input else sae.b_enc
    return h + bias.to(h.dtype)


def batch_topk_select(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (sorted by row) of the ``k * rows`` largest positive entries of ``pre``:
    BatchTopK's selection (Bussmann et al. 2024), what ``batch_topk_relu`` keeps, without sorting
    the whole matrix.

    Each row's ``2k`` largest entries are candidates; ``t``, the ``k * rows``-th largest candidate,
    is at most the true threshold, so an entry left out can only win in a row whose ``2k``-th
    candidate reaches ``t``; such rows are searched in full. The result is exact. When rows split
    into blocks of ``SELECT_BLOCK`` with at least k blocks per row, :func:`_select_by_blocks` finds
    the same entries with one linear pass instead of a per-row top-2k."""
    B, n = pre.shape
    total = min(k * B, B * n)
    if n % SELECT_BLOCK == 0 and n // SELECT_BLOCK >= k:
        return _select_by_blocks(pre, total)
    m = min(n, 2 * k)
    cv, ci = pre.topk(m, dim=-1)
    t = cv.reshape(-1).topk(total).values[-1]
    over = (cv[:, -1] >= t) & (m < n)
    rows_all = torch.arange(B, device=pre.device)
    if bool(over.any()):
        keep, full = (~over).nonzero().squeeze(1), over.nonzero().squeeze(1)
        cand_v = torch.cat([cv[keep].reshape(-1), pre[full].reshape(-1)])
        cand_r = torch.cat([keep.repeat_interleave(m), full.repeat_interleave(n)])
        cand_c = torch.cat([ci[keep].reshape(-1), torch.arange(n, device=pre.device).repeat(len(full))])
    else:
        cand_v, cand_r, cand_c = cv.reshape(-1), rows_all.repeat_interleave(m), ci.reshape(-1)
    top = cand_v.topk(total)
    sel = top.indices[top.values > 0]
    rows, cols = cand_r[sel], cand_c[sel]
    order = torch.argsort(rows * n + cols)
    return rows[order], cols[order]


def _select_by_blocks(pre: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_topk_select`` through block maxima. Block ``(r, c)`` holds the ``SELECT_BLOCK``
    entries ``pre[r, c + g * n / SELECT_BLOCK]``. If at least ``total`` blocks have a maximum of
    ``t`` or more, that many entries reach ``t``, so the ``total``-th largest entry is at least
    ``t`` and every winner lies in one of those blocks: only they are searched."""
    B, n = pre.shape
    w = n // SELECT_BLOCK
    grid = pre.reshape(B, SELECT_BLOCK, w)
    bmax = grid.amax(1).reshape(-1)
    sample = bmax[::17]  # t from a sample (17 is prime to the row width), checked below
    rank = min(sample.numel(), math.ceil(1.25 * total * sample.numel() / bmax.numel()) + 1)
    blocks = (bmax >= sample.kthvalue(sample.numel() - rank + 1).values).nonzero().squeeze(1)
    if blocks.numel() < total:  # the sample's t was too high: the exact one
        blocks = (bmax >= bmax.kthvalue(bmax.numel() - total + 1).values).nonzero().squeeze(1)
    r, c = blocks // w, blocks % w
    top = grid[r, :, c].reshape(-1).topk(total, sorted=False)
    keep = top.indices[top.values > 0]
    b, g = keep // SELECT_BLOCK, keep % SELECT_BLOCK
    flat = (r[b] * n + g * w + c[b]).sort().values
    return flat // n, flat % n


# ---------------------------------------------------------------- one SAE's training state
class _Trainer:
    def __init__(self, sae: SAE, lr: float, total_steps: int, l1_coefficient: float, l0_coefficient: float,
                 bandwidth: float, aux_k: int, aux_coefficient: float, dead_tokens: int,
                 autocast: torch.dtype | None = None):
        self.sae = sae
        self.autocast = autocast
        self.arch = sae.arch
        self.params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
        if self.arch == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.log(sae.threshold.detach().clone()))
            self.params.append(self.log_threshold)
        groups = [{"params": self.params[:4], "mult": 1.0}]
        if self.arch == "jumprelu":  # thresholds move THRESHOLD_LR_MULT times faster (see the module notes)
            groups.append({"params": self.params[4:], "mult": THRESHOLD_LR_MULT})
        self.opt = torch.optim.Adam(groups, lr=lr, eps=6.25e-10)
        self.lr, self.total_steps, self.step_i = lr, total_steps, 0
        self.l1, self.l0c, self.eps = l1_coefficient, l0_coefficient, bandwidth
        self.aux_k, self.aux_c, self.dead_tokens = aux_k, aux_coefficient, dead_tokens
        dev = sae.W_enc.device
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
        self.fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=dev)
        self.fmax = torch.zeros(sae.d_sae, device=dev)
        self.seen = 0
        self.threshold_sum, self.threshold_n = 0.0, 0
        self.last = {}
        lo, hi = WINDOW_STEPS
        self.window = collections.deque(maxlen=max(lo, min(hi, total_steps // 10)))

    def _lr(self) -> float:
        decay_start = int(0.8 * self.total_steps)
        if self.step_i < decay_start or self.total_steps <= 1:
            return self.lr
        return self.lr * max(0.0, (self.total_steps - self.step_i) / max(1, self.total_steps - decay_start))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.arch in ("topk", "batchtopk"):
            self._step_sparse(x, y)
        else:
            self._step_dense(x, y)

    def _products(self, x: torch.Tensor):
        """The context of the dense matrix products: bf16 autocast under bf16-mixed, else nothing.
        Their outputs meet a float32 bias, so what leaves the context is float32 again."""
        return torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None)

    def _step_sparse(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """TopK/BatchTopK: only the selected latents are gathered and decoded.

        The encoder is one dense product; the decoder is ``embedding_bag`` over the selected
        latents (k per token instead of d_sae), forward and backward, and so is AuxK's decoder
        over the dead latents. The loss and its gradients equal those of the dense formulation
        (``tests/test_sae.py`` checks them against autograd through dense matrices)."""
        sae = self.sae
        B, n = x.shape[0], sae.d_sae
        with self._products(x):
            pre = _pre_acts(sae, x)
        with torch.no_grad():
            if self.arch == "topk":
                cols = pre.detach().topk(sae.k, dim=-1).indices
                rows = None
            else:
                rows, cols = batch_topk_select(pre.detach(), sae.k)
        if rows is None:  # k per row: fixed-size bags; the decoder's weights and sums stay float32
            vals = torch.relu(pre.gather(1, cols)).float()
            y_hat = F.embedding_bag(cols, sae.W_dec, mode="sum", per_sample_weights=vals) + sae.b_dec
            cols_f, vals_f = cols.reshape(-1), vals.reshape(-1)
        else:  # BatchTopK: a variable number per row, rows sorted
            vals = torch.relu(pre[rows, cols]).float()
            offsets = torch.zeros(B, dtype=torch.long, device=x.device)
            offsets[1:] = torch.bincount(rows, minlength=B).cumsum(0)[:-1]
            y_hat = F.embedding_bag(cols, sae.W_dec, offsets, mode="sum", per_sample_weights=vals) + sae.b_dec
            cols_f, vals_f = cols, vals
            kept = vals_f[vals_f > 0]
            if kept.numel():
                self.threshold_sum += float(kept.min().detach())
                self.threshold_n += 1
        err = y - y_hat
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        dead = self.since_fired >= self.dead_tokens
        n_dead = int(dead.sum())
        aux = torch.zeros((), device=x.device)
        if n_dead and self.aux_c > 0:
            # AuxK (Gao et al. 2024): dead latents' top pre-activations model the residual error.
            dead_idx = dead.nonzero().squeeze(1)
            av, ai = pre[:, dead_idx].topk(min(self.aux_k, n_dead), dim=-1)
            e_hat = F.embedding_bag(dead_idx[ai], sae.W_dec, mode="sum", per_sample_weights=torch.relu(av).float())
            aux = (err.detach() - e_hat).pow(2).sum(-1).mean()
            if torch.isfinite(aux):
                loss = loss + self.aux_c * aux
        self._update(loss)
        with torch.no_grad():
            on = vals_f.detach() > 0
            counts = torch.bincount(cols_f[on], minlength=n)
            self.since_fired += B
            self.since_fired[counts > 0] = 0
            self.fired += counts.double()
            self.fmax.scatter_reduce_(0, cols_f, vals_f.detach(), "amax")
            self.seen += B
            self._record(loss, mse, aux, float(on.sum()), err, y, n_dead / n)

    def _update(self, loss: torch.Tensor) -> None:
        """Backward, decoder-row tangent projection, clipping, Adam with the schedule, renormalise."""
        sae = self.sae
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, g = sae.W_dec, sae.W_dec.grad
            if g is not None:  # keep the step tangent to the unit sphere of each decoder row
                g -= (g * W).sum(1, keepdim=True) * W
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self._lr() * group["mult"]
        self.opt.step()
        self.step_i += 1
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)
            if self.arch == "jumprelu":
                sae.threshold.copy_(self.log_threshold.exp())

    def _step_dense(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """ReLU + L1 and JumpReLU: every latent may fire, so the product is dense."""
        sae = self.sae
        with self._products(x):
            pre = _pre_acts(sae, x).float()
        if self.arch == "relu":
            f = torch.relu(pre)
        else:
            f = _JumpReLU.apply(pre, self.log_threshold.exp(), self.eps)
        with self._products(x):
            y_hat = (f @ sae.W_dec + sae.b_dec).float()
        err = y - y_hat
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        if self.arch == "relu":
            loss = loss + self.l1 * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        else:
            loss = loss + self.l0c * _Step.apply(pre, self.log_threshold.exp(), self.eps).sum(-1).mean()
        self._update(loss)
        with torch.no_grad():
            active = (f > 0)
            fired_now = active.any(0)
            self.since_fired += x.shape[0]
            self.since_fired[fired_now] = 0
            self.fired += active.sum(0).double()
            self.fmax = torch.maximum(self.fmax, f.detach().amax(0))
            self.seen += x.shape[0]
            dead = float((self.since_fired >= self.dead_tokens).double().mean())
            self._record(loss, mse, torch.zeros(()), float(active.sum()), err, y, dead)

    def _record(self, loss, mse, aux, active: float, err: torch.Tensor, y: torch.Tensor, dead: float) -> None:
        """This step's figures (``last``) and its sums in the window of recent steps."""
        n = y.shape[0]
        err2, tot = float(err.pow(2).sum()), float((y - y.mean(0)).pow(2).sum())
        self.last = dict(loss=float(loss), mse=float(mse), aux=float(aux), l0=active / n,
                         ev=1 - err2 / max(tot, 1e-12), dead=dead)
        self.window.append((err2, tot, active, n))

    def window_stats(self) -> dict:
        """Explained variance and L0 pooled over the window of recent steps (token-weighted), the
        dead share now, and how many steps and tokens the window holds."""
        err2, tot, active, n = (sum(c) for c in zip(*self.window)) if self.window else (0.0, 0.0, 0.0, 0)
        return dict(ev=1 - err2 / max(tot, 1e-12), l0=active / max(n, 1), dead=self.last.get("dead", 0.0),
                    steps=len(self.window), tokens=int(n))

    # ------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything a resumed run needs: tensors (weights, Adam's moments and step counts, firing
        statistics) and JSON scalars. :meth:`restore` puts them back bit for bit."""
        t = {name: getattr(self.sae, name).detach() for name in SAE_TENSORS}
        if self.arch == "jumprelu":
            t["log_threshold"] = self.log_threshold.detach()
        t.update(since_fired=self.since_fired, fired=self.fired, fmax=self.fmax)
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for key, v in st.items():
                t[f"opt.{i}.{key}"] = v.reshape(-1) if v.dim() == 0 else v
        scalars = dict(step_i=self.step_i, seen=self.seen, threshold_sum=self.threshold_sum,
                       threshold_n=self.threshold_n, window=[list(w) for w in self.window],
                       opt={str(i): sorted(st) for i, st in opt["state"].items()})
        return t, scalars

    def restore(self, t: dict[str, torch.Tensor], scalars: dict) -> None:
        dev = self.sae.W_enc.device
        with torch.no_grad():
            for name in SAE_TENSORS:
                getattr(self.sae, name).copy_(t[name])
            if self.arch == "jumprelu":
                self.log_threshold.copy_(t["log_threshold"])
        self.since_fired, self.fired, self.fmax = (t[k].to(dev) for k in ("since_fired", "fired", "fmax"))
        sd = self.opt.state_dict()
        sd["state"] = {int(i): {key: (t[f"opt.{i}.{key}"].reshape(()) if key == "step" else t[f"opt.{i}.{key}"])
                                for key in keys} for i, keys in scalars["opt"].items()}
        self.opt.load_state_dict(sd)
        self.step_i, self.seen = scalars["step_i"], scalars["seen"]
        self.threshold_sum, self.threshold_n = scalars["threshold_sum"], scalars["threshold_n"]
        self.window.clear()
        self.window.extend(tuple(w) for w in scalars["window"])

    def finish(self, s_in: float, s_out: float) -> SAE:
        """Fold the input scaling into the weights and fix BatchTopK's inference threshold."""
        sae = self.sae
        with torch.no_grad():
            if self.arch == "batchtopk":
                sae.threshold.fill_(self.threshold_sum / max(1, self.threshold_n))
            # encoder reads s_in * x; decoder output is divided by s_out to return to raw units
            # (for an SAE s_in == s_out, so the b_dec subtracted before encoding stays consistent)
            sae.W_enc.mul_(s_in)
            sae.b_dec.div_(s_out)
            sae.W_dec.div_(s_out)
            sae.feature_max.copy_(self.fmax)
            sae.feature_density.copy_((self.fired / max(1, self.seen)).float())
        sae.requires_grad_(False)
        sae.threshold.requires_grad_(False)
        return sae.eval()



def training_precision(dtype, device, what: str = "dtype") -> str:
    """What ``train_sae(dtype=...)`` computes in on ``device``: ``"bf16-mixed"`` or ``"float32"``
    (``what`` names the argument in the error a bad ``dtype`` raises)."""
    name = check_training_dtype(dtype, what)
    if name == "auto":
        return MIXED if AUTO_BF16.get("sae-train") and native_bf16(device) else "float32"
    return MIXED if name in (MIXED, "bfloat16") else "float32"



def _initialise(sae: SAE, sample: torch.Tensor, b_dec_init: str, gen: torch.Generator) -> None:
    with torch.no_grad():
        W = torch.randn(sae.W_dec.shape, generator=gen)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        if sae.W_enc.shape == (W.shape[1], W.shape[0]):
            sae.W_enc.copy_(W.T)
        else:  # transcoder changing width: an independent random encoder
            We = torch.randn(sae.W_enc.shape, generator=gen)
            sae.W_enc.copy_(We / We.norm(dim=0, keepdim=True))
        sae.b_enc.zero_()
        if b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample.double()).float())
        elif b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
        else:
            sae.b_dec.zero_()
        sae.threshold.fill_(0.1 if sae.arch == "jumprelu" else 0.0)

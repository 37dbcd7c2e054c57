"""Site names, per-family adapters, and the one hook mechanism shared by capture and interventions.

A site is a named place inside the model (see docs/architecture.md):

* ``resid.0`` the embedding output (input of block 0); ``resid.{L+1}`` the output of block L.
* ``mlp.L`` block L's MLP neuron activations: the input of its MLP output projection.
* ``attn_out.L`` / ``mlp_out.L`` the output of block L's attention / MLP output projection,
  i.e. each sublayer's contribution to the residual stream.
* ``attn.L`` block L's attention probabilities (read by the attention analyses).
* ``attn_z.L`` the input of block L's attention output projection: every head's output,
  concatenated (``[..., heads * head_dim]``); head h is slice ``h * head_dim:(h + 1) * head_dim``.
* ``mlp_in.L`` the input of block L's MLP: the residual stream after the post-attention norm
  (what a transcoder reads to predict ``mlp_out.L``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import LlmriError

if TYPE_CHECKING:  # torch is imported where it is used, so site names parse without it
    import torch
    from torch import nn

KINDS = ("resid", "mlp", "attn_out", "mlp_out", "attn", "attn_z", "mlp_in")
# How a document's tokens are pooled into one vector per site (llmri.capture); here, in a module
# without torch, so the command line checks names before anything heavy loads.
POOLS = ("mean", "mean-nosink", "first", "last", "max")


@dataclass(frozen=True)
class Adapter:
    """Where a model family keeps its blocks and sublayers (paths relative to ``base_model``)."""

    family: str
    layers: str        # the ModuleList of blocks
    mlp_out: str       # block-relative: MLP output projection (its input is ``mlp.L``)
    attn: str          # block-relative: the attention module
    attn_out: str      # block-relative: attention output projection
    # How positions survive left padding: "ids" (forward() takes position_ids, counted from 0 at
    # the first real token), "self" (the model derives them from the pad token, RoBERTa), or
    # "none" (positions are always 0..T-1, so capture pads on the right).
    positions: str = "ids"
    causal: bool = False  # a decoder: each token sees only the tokens before it
    mlp: str = ""      # block-relative: the MLP module (its input is ``mlp_in.L``); "" = parent of mlp_out

    @property
    def mlp_module(self) -> str:
        return self.mlp or (self.mlp_out.rsplit(".", 1)[0] if "." in self.mlp_out else "")


_LLAMA_LIKE = dict(layers="layers", mlp_out="mlp.down_proj", attn="self_attn",
                   attn_out="self_attn.o_proj")
_BERT_LIKE = dict(layers="encoder.layer", mlp_out="output.dense", attn="attention.self",
                  attn_out="attention.output.dense", mlp="intermediate")

ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter("gpt2", "h", "mlp.c_proj", "attn", "attn.c_proj", causal=True),
    "bert": Adapter("bert", **_BERT_LIKE),
    # RoBERTa derives positions from the padding token itself.
    "roberta": Adapter("roberta", **_BERT_LIKE, positions="self"),
    "xlm-roberta": Adapter("xlm-roberta", **_BERT_LIKE, positions="self"),
    "distilbert": Adapter("distilbert", "transformer.layer", "ffn.lin2", "attention",
                          "attention.out_lin", positions="none"),
    "llama": Adapter("llama", **_LLAMA_LIKE, causal=True),
    "mistral": Adapter("mistral", **_LLAMA_LIKE, causal=True),
    "qwen2": Adapter("qwen2", **_LLAMA_LIKE, causal=True),
    "gpt_neox": Adapter("gpt_neox", "layers", "mlp.dense_4h_to_h", "attention", "attention.dense", causal=True),
}
SUPPORTED = "GPT-2, BERT, RoBERTa, DistilBERT, Llama, Mistral, Qwen2, GPT-NeoX"


def base_of(module: nn.Module) -> nn.Module:
    """The transformer body of a model that may carry a head (LM, classifier)."""
    from torch import nn

    base = getattr(module, "base_model", None)
    return base if isinstance(base, nn.Module) else module


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def _linear_dims(mod: nn.Module):
    """(in, out) features of a Linear or GPT-2 style Conv1D, else None."""
    from torch import nn

    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "weight") and mod.weight.dim() == 2:
        return mod.weight.shape[0], mod.weight.shape[1]
    return None


def discover(module: nn.Module) -> Adapter:
    """Find blocks and sublayers of an unlisted architecture by shape; fail with the supported list."""
    from torch import nn

    cfg = getattr(module, "config", None)
    model_type = getattr(cfg, "model_type", type(module).__name__)
    fail = LlmriError(f"unsupported model family {model_type!r}: llmri supports {SUPPORTED}, "
                      "and could not find its blocks automatically")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model", None)
    n_layers = (getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
                or getattr(cfg, "num_layers", None))
    base = base_of(module)
    lists = [(name, m) for name, m in base.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and (n_layers is None or len(m) == n_layers)]
    if not lists or hidden is None:
        raise fail
    layers_path, blocks = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    block = blocks[0]
    linears = [(name, _linear_dims(m)) for name, m in block.named_modules() if _linear_dims(m)]
    to_hidden = [(name, d) for name, d in linears if d[1] == hidden]
    mlp = [(name, d) for name, d in to_hidden if d[0] > hidden]
    attn = [(name, d) for name, d in to_hidden if d[0] <= hidden and ("att" in name.lower())]
    if not mlp or not attn:
        raise fail
    mlp_out = max(mlp, key=lambda nd: nd[1][0])[0]
    attn_out = attn[-1][0]
    attn_mod = attn_out.rsplit(".", 1)[0] if "." in attn_out else attn_out
    seen = probe_causal(module)
    causal = bool(getattr(cfg, "is_decoder", False)) or (
        seen if seen is not None else "CausalLM" in type(module).__name__)
    return Adapter(f"auto:{model_type}", layers_path, mlp_out, attn_mod, attn_out, positions="none",
                   causal=causal)


def probe_causal(module: nn.Module) -> bool | None:
    """Whether the model is causal, seen in what it does: one forward of two 4-token inputs that
    differ only at the last token; True when every earlier position's output is unchanged (each
    token sees only the tokens before it), False when they move too, None when it cannot tell
    (the forward fails, or the last token changes nothing)."""
    import torch

    cfg = getattr(module, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab < 8:
        return None
    ids = torch.tensor([[vocab // 2 + i for i in range(4)]] * 2) % vocab
    ids[1, -1] = (ids[0, -1] + 1) % vocab
    try:
        param = next(module.parameters())
        with torch.inference_mode():
            h = base_of(module)(input_ids=ids.to(param.device), attention_mask=torch.ones_like(ids).to(param.device))[0]
    except Exception:  # a model that needs more than input ids: the config decides
        return None
    h = h.float()
    early, late = (h[0, :-1] - h[1, :-1]).abs().max().item(), (h[0, -1] - h[1, -1]).abs().max().item()
    if not late > 0:
        return None
    return early <= 1e-3 * late


def adapter_for(module: nn.Module) -> Adapter:
    """The adapter of a transformers model: from the table, else discovered."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type) or discover(module)
    try:
        blocks(module, adapter)
    except (AttributeError, IndexError) as e:
        raise LlmriError(f"model family {model_type!r}: expected blocks at "
                         f"'{adapter.layers}' ({e})") from None
    if not adapter.causal and getattr(getattr(module, "config", None), "is_decoder", False):
        adapter = replace(adapter, causal=True)   # BERT or RoBERTa configured as a decoder
    return adapter


def blocks(module: nn.Module, adapter: Adapter) -> nn.ModuleList:
    return _get(base_of(module), adapter.layers)


def submodule(module: nn.Module, adapter: Adapter, layer: int, part: str) -> nn.Module:
    """A block's sublayer by adapter field name: ``"mlp_out"``, ``"attn_out"`` or ``"attn"``."""
    return _get(blocks(module, adapter)[layer], getattr(adapter, part))


def n_heads(module: nn.Module) -> int:
    cfg = module.config
    for k in ("num_attention_heads", "n_head", "n_heads"):
        if getattr(cfg, k, None):
            return int(getattr(cfg, k))
    raise LlmriError(f"cannot tell the number of attention heads of {type(module).__name__}")


# ---------------------------------------------------------------- site names
def parse_site(site: str) -> tuple[str, int | None]:
    """``"mlp.3"`` -> ``("mlp", 3)``; ``"mlp"`` -> ``("mlp", None)`` (every layer)."""
    kind, _, layer = str(site).partition(".")
    if kind not in KINDS:
        raise LlmriError(f"unknown site {site!r}: a site is one of {', '.join(KINDS)}, "
                         "optionally followed by .LAYER (for example resid.3)")
    if not layer:
        return kind, None
    try:
        return kind, int(layer)
    except ValueError:
        raise LlmriError(f"site {site!r}: the layer after the dot must be an integer") from None


def layer_count(kind: str, n_layers: int) -> int:
    """How many layers a site kind has: n_layers + 1 for ``resid``, else n_layers."""
    return n_layers + 1 if kind == "resid" else n_layers


def expand_sites(specs, n_layers: int, layers=None) -> list[str]:
    """Expand site specs (``"resid"``, ``"mlp.2"``) into concrete names, filtered by ``layers``.

    Negative layers count from the end of each kind's range.
    """
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s]
    out: list[str] = []
    for spec in specs:
        kind, layer = parse_site(spec.strip())
        count = layer_count(kind, n_layers)
        if layer is not None:
            chosen = [layer]
        elif layers is None:
            chosen = list(range(count))
        else:
            chosen = list(layers)
        for L in chosen:
            L2 = L + count if L < 0 else L
            if not 0 <= L2 < count:
                raise LlmriError(f"layer {L} is out of range for site {kind!r}: it has layers "
                                 f"0..{count - 1}")
            name = f"{kind}.{L2}"
            if name not in out:
                out.append(name)
    return out


def block_of(site: str) -> int:
    """The block a site belongs to (``resid.0`` is before block 0: -1; ``resid.{L+1}`` is block L)."""
    kind, layer = parse_site(site)
    return layer - 1 if kind == "resid" else layer


# ---------------------------------------------------------------- hooks
HookFn = Callable[["torch.Tensor"], "torch.Tensor | None"]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


def _register(module: nn.Module, adapter: Adapter, site: str, fn: HookFn):
    kind, layer = parse_site(site)
    blks = blocks(module, adapter)
    n = len(blks)
    if layer is None or not 0 <= layer < layer_count(kind, n):
        raise LlmriError(f"site {site!r} does not exist: this model has {n} blocks")

    def pre_hook(mod, args, kwargs):
        if args:
            new = fn(args[0])
            if new is not None:
                return (new,) + tuple(args[1:]), kwargs
        else:
            new = fn(kwargs["hidden_states"])
            if new is not None:
                return args, {**kwargs, "hidden_states": new}
        return None

    def post_hook(mod, args, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    if kind == "resid" and layer == 0:
        return blks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    if kind == "resid":
        return blks[layer - 1].register_forward_hook(post_hook)
    block = blks[layer]
    if kind == "mlp":
        return _get(block, adapter.mlp_out).register_forward_pre_hook(pre_hook, with_kwargs=True)
    if kind == "mlp_out":
        return _get(block, adapter.mlp_out).register_forward_hook(post_hook)
    if kind == "attn_out":
        return _get(block, adapter.attn_out).register_forward_hook(post_hook)
    if kind == "attn_z":
        return _get(block, adapter.attn_out).register_forward_pre_hook(pre_hook, with_kwargs=True)
    if kind == "mlp_in":
        if not adapter.mlp_module:
            raise LlmriError(f"site {site!r}: cannot tell where the MLP of model family {adapter.family!r} "
                             "starts; mlp_in is supported for " + SUPPORTED)
        return _get(block, adapter.mlp_module).register_forward_pre_hook(pre_hook, with_kwargs=True)

    def attn_hook(mod, args, output):  # attention modules return (output, probabilities)
        probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if probs is None:
            raise LlmriError(f"site {site!r}: the attention module returned no probabilities; "
                             "read attention inside llmri.sites.eager_attention(model)")
        if fn(probs) is not None:
            raise LlmriError(f"site {site!r}: attention probabilities can be read, not replaced")
        return None

    return _get(block, adapter.attn).register_forward_hook(attn_hook)


@contextlib.contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """Switch a model from fused attention kernels (SDPA, flash) to the eager implementation,
    which returns attention probabilities; the previous implementation is restored on exit."""
    cfg = getattr(module, "config", None)
    previous = getattr(cfg, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(module, "set_attn_implementation")
    if switch:
        module.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            module.set_attn_implementation(previous)


@contextlib.contextmanager
def hooks(module: nn.Module, adapter: Adapter, fns: dict[str, HookFn]) -> Iterator[None]:
    """Run ``fns[site](tensor)`` at each site during forward passes inside the block.

    A function returning a tensor replaces the site's value (interventions); returning
    ``None`` leaves it as is (capture). Every hook is removed on exit, even after an error.
    """
    handles = []
    try:
        for site, fn in fns.items():
            handles.append(_register(module, adapter, site, fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def recorded_blocks(module: nn.Module, adapter: Adapter, upto: int, store: list[list],
                    replay: bool = False) -> Iterator[None]:
    """Record, or replay, the outputs of blocks ``0..upto-1`` call by call.

    Recording (``replay=False``) appends each block's output to ``store[i]`` in call order.
    Replaying runs none of those blocks: the k-th call of block i returns ``store[i][k]`` as it
    was recorded. A lesion in block L leaves the blocks before it unchanged, so a lesion map
    replays them from one unablated pass instead of recomputing them for every lesion. A call
    whose input does not have the recorded shape (another batch order) raises RuntimeError.
    Everything is restored on exit, even after an error.
    """
    blks = blocks(module, adapter)
    handles, patched = [], []
    try:
        for i in range(upto):
            if not replay:
                handles.append(blks[i].register_forward_hook(
                    lambda mod, args, output, i=i: store[i].append(output)))
                continue
            calls = iter(store[i])

            def forward(*args, _calls=calls, _i=i, **kwargs):
                x = args[0] if args else kwargs.get("hidden_states")
                out = next(_calls, None)
                if out is None or x is None or _first(out).shape != x.shape:
                    raise RuntimeError(f"block {_i}: no recorded output for this call")
                return out

            patched.append((blks[i], blks[i].__dict__.get("forward")))
            blks[i].forward = forward          # an instance attribute shadows the class's forward
        yield
    finally:
        for h in handles:
            h.remove()
        for blk, before in patched:
            if before is None:
                blk.__dict__.pop("forward", None)
            else:
                blk.forward = before

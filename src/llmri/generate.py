"""Generation that runs unchanged under any intervention (ablate, patching, steer, clamp).

Interventions are hooks on the model's modules, so every forward pass of ``generate`` (the
prompt, then one pass per new token with the key/value cache) goes through them.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import chat_prompt, pad_batch
from .capture import embed
from .errors import LlmriError
from .interventions import steer, steering_vector
from .model import as_model, is_causal_lm
from .precision import computing
from .probe import make_classifier
from .store import Scan
from .threads import configure_threads


def generate(model, prompts, max_new_tokens: int = 64, chat: bool | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_p: float | None = None, seed: int = 0, system: str | None = None,
             batch_size: int = 16, progress: bool | None = None) -> str | list[str]:
    """Continue one prompt or a list of prompts; returns the new text (a string or a list).

    The chat template is applied when the tokenizer has one (``chat=None``); prompts are batched
    with left padding (batched equals one by one); greedy by default, and sampling
    (``do_sample=True``) is deterministic under ``seed``. Any intervention context around the
    call applies to every forward pass. ``progress``: a bar of generated tokens on stderr
    (None: only when stderr is a terminal); the text is the same either way.

    >>> dec = llmri.load_model("default-decoder")                        # doctest: +SKIP
    >>> llmri.generate(dec, "What is the capital of France?")
    'The capital of France is Paris.'
    """
    model = as_model(model)
    single, ids, kwargs = _prepare(model, prompts, max_new_tokens, chat, do_sample, temperature, top_p, system,
                                   batch_size)
    n_batches = -(-len(ids) // batch_size)
    bar = tqdm(total=n_batches * max_new_tokens, unit="tok", desc="generating", file=sys.stderr,
               dynamic_ncols=True, disable=None if progress is None else not progress)
    with bar:
        out = _run(model, ids, kwargs, batch_size, seed, None if bar.disable else bar.update)
    return out[0] if single else out


def check_prompts(prompts, what: str = "prompts") -> None:
    """Refuse, in one line naming ``what``, no prompts or a text prompt that is empty or only
    whitespace (a model given nothing generates filler). Chat-message lists are left to the template.
    The CLI calls it before a model loads."""
    items = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not items:
        raise LlmriError(f"{what}: no prompts given")
    for i, p in enumerate(items):
        if isinstance(p, str) and not p.strip():
            raise LlmriError(f"{what}: prompt {i} is {'empty' if not p else 'only whitespace'} ({p!r}); give some text")


def check_alphas(alphas, what: str = "alphas") -> list[float]:
    """Steering strengths as floats: at least one, each a finite number (NaN or infinity would
    generate nothing and write no valid JSON), else one line naming ``what``."""
    try:
        out = [float(a) for a in ([alphas] if isinstance(alphas, (int, float, str)) else alphas)]
    except (TypeError, ValueError):
        raise LlmriError(f"{what} {alphas!r}: expected numbers") from None
    if not out:
        raise LlmriError(f"{what}: give at least one number")
    bad = [a for a in out if not math.isfinite(a)]
    if bad:
        raise LlmriError(f"{what}: {bad[0]!r} is not a finite number; give strengths such as -8,-4,0,4,8")
    return out


def _prepare(model, prompts, max_new_tokens, chat, do_sample, temperature, top_p, system, batch_size):
    """Check a generation request and tokenise its prompts: (one prompt given, token ids, the
    keyword arguments of transformers' ``generate``)."""
    if not is_causal_lm(model):
        raise LlmriError(f"generate: {model.name} is not a decoder with a language-model head")
    single = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                          and isinstance(prompts[0], dict))
    items = [prompts] if single else list(prompts)
    check_prompts(items)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise LlmriError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise LlmriError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LlmriError(f"batch_size must be a positive integer, got {batch_size!r}")
    configure_threads()
    tok = model.tokenizer
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else bool(chat)
    texts = [chat_prompt(model, p, use_chat, system) for p in items]
    # a chat template writes its own special tokens
    ids = [tok(t, add_special_tokens=not use_chat)["input_ids"] for t in texts]
    limit = model.max_length - max_new_tokens
    for i, x in enumerate(ids):
        if not x:
            raise LlmriError(f"prompt {i}: the tokenizer produced no tokens")
        if len(x) > limit:
            raise LlmriError(f"prompt {i}: {len(x)} tokens + max_new_tokens {max_new_tokens} exceed the "
                             f"model's limit of {model.max_length}")
    gen = model.module.generation_config
    eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else tok.eos_token_id
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
                  eos_token_id=eos)
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=top_p, top_k=None)
    else:  # greedy: no sampling knobs, whatever the model's generation_config suggests
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return single, ids, kwargs


class TokenCounter:
    """A transformers streamer that only counts: ``tick(1)`` for every generated token (its first
    ``put`` is the prompt), so a progress bar moves while a batch generates.

    >>> model.module.generate(ids, streamer=TokenCounter(bar.update))    # doctest: +SKIP
    """

    def __init__(self, tick):
        self.tick, self.prompt, self.count = tick, True, 0

    def put(self, value) -> None:
        if self.prompt:
            self.prompt = False
            return
        self.count += 1
        self.tick(1)

    def end(self) -> None:
        pass


def _run(model, ids, kwargs, batch_size, seed, tick=None, batch_done=None) -> list[str]:
    """Generate from token ids in length-sorted batches; returns the new text of each, in order.
    ``tick(n)`` counts generated steps (a batch that stops early at EOS is counted in full);
    ``batch_done()`` is called after each batch."""
    tok = model.tokenizer
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out: list[str] = [""] * len(ids)
    devices = [model.device] if model.device.type == "cuda" else []
    # no_grad, not inference_mode: under inference_mode autocast re-casts every weight on every step
    with torch.random.fork_rng(devices=devices), torch.no_grad(), computing(model, "generate"):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            batch = [int(i) for i in order[start:start + batch_size]]
            inputs, _ = pad_batch(model, [ids[i] for i in batch], side="left")
            inputs.pop("position_ids", None)  # generate derives positions from the attention mask
            ticks = TokenCounter(tick) if tick is not None else None
            result = model.module.generate(**inputs, **kwargs, **({"streamer": ticks} if ticks else {}))
            if ticks is not None and ticks.count < kwargs["max_new_tokens"]:
                tick(kwargs["max_new_tokens"] - ticks.count)
            if batch_done is not None:
                batch_done()
            new = result[:, inputs["input_ids"].shape[1]:]
            for i, row in zip(batch, new.tolist()):
                out[i] = tok.decode(row, skip_special_tokens=True)
    return out


PROBE_C = 0.01  # inverse L2 strength of the probe that scores steered generations


def steer_sweep(model, scan, positive, negative, layer: int, alphas, prompts, site: str = "resid",
                mode: str = "add", max_new_tokens: int = 40, probe_layer: int | None = None,
                seed: int = 0, progress: bool | None = None):
    """Generate every prompt under a range of steering strengths and score each generation.

    The steering vector is :func:`llmri.steering_vector` of the Scan (``positive`` minus
    ``negative``) at ``site``/``layer``. Each generation is read back by the model, unsteered and
    pooled as the Scan was, at ``probe_layer`` (default ``layer``), and a logistic-regression
    probe trained on the Scan's ``positive`` vs ``negative`` documents (standardised, L2 with
    ``C = 0.01`` so its probabilities stay graded) gives the probability of ``positive``.
    Returns a DataFrame: prompt, alpha, generation, p_positive (NaN for an empty generation).
    ``progress``: a bar on stderr with one step per alpha and batch of prompts (None: only when
    stderr is a terminal); the table is the same either way.
    """
    import pandas as pd

    model = as_model(model)
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    alphas = check_alphas(alphas)
    check_prompts(prompts)
    batch_size = 16
    _, ids, kwargs = _prepare(model, prompts, max_new_tokens, None, False, 1.0, None, None, batch_size)
    vector = steering_vector(scan, positive, negative, layer, site=site, model=model)
    probe_layer = layer if probe_layer is None else probe_layer
    names = [positive] if isinstance(positive, str) else list(positive)
    negs = [negative] if isinstance(negative, str) else list(negative)
    clf = category_probe(scan, names, negs, probe_layer, site, seed)
    rows = []
    bar = tqdm(total=len(alphas) * -(-len(ids) // batch_size), unit="batch", desc="steering", file=sys.stderr,
               dynamic_ncols=True, disable=None if progress is None else not progress)
    with bar:
        for a in alphas:
            bar.set_postfix(alpha=f"{a:g}")
            with steer(model, {f"{site}.{layer}": vector}, alpha=a, mode=mode):
                outs = _run(model, ids, kwargs, batch_size, seed, batch_done=bar.update)
            rows += [{"prompt": p, "alpha": a, "generation": g} for p, g in zip(prompts, outs)]
    df = pd.DataFrame(rows)
    df["p_positive"] = probe_texts(model, clf, list(df["generation"]), f"{site}.{probe_layer}", scan.settings["pool"])
    df.attrs.update(positive=", ".join(names), negative=", ".join(negs), site=f"{site}.{layer}",
                    probe_layer=probe_layer, mode=mode, vector_norm=float(np.linalg.norm(vector)))
    return df


def category_probe(scan, positive: list[str], negative: list[str], layer: int, site: str = "resid", seed: int = 0):
    """A logistic-regression probe of ``positive`` against ``negative`` documents (label names) on
    the Scan's pooled ``site``/``layer``: standardised, L2 with ``C = PROBE_C`` so that its
    probabilities stay graded on new text. Read texts with :func:`probe_texts`."""
    unknown = [c for c in positive + negative if c not in scan.label_names]
    if unknown:
        raise LlmriError(f"category {unknown[0]!r} is not one of the scan's labels: {', '.join(scan.label_names)}")
    keep = np.isin(scan.labels, [scan.label_names.index(c) for c in positive + negative])
    y = np.isin(scan.labels, [scan.label_names.index(c) for c in positive])[keep]
    # With far more dimensions than documents, a logistic probe separates its training set and its
    # probabilities saturate at 0 or 1 on any new text; a strong L2 penalty keeps them graded.
    return make_classifier("logistic", seed=seed, C=PROBE_C).fit(scan.activations(layer, site)[keep], y)


def probe_texts(model, clf, texts: list[str], site: str, pool: str) -> np.ndarray:
    """P(positive) of :func:`category_probe` for each text, read unsteered and pooled as the Scan
    was at ``site`` (one layer); NaN for an empty text."""
    scored = [i for i, g in enumerate(texts) if g.strip()]
    p = np.full(len(texts), np.nan)
    if scored:
        p[scored] = clf.predict_proba(embed(model, [texts[i] for i in scored], site, pool=pool))[:, 1]
    return p

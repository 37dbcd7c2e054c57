"""Generation that runs unchanged under any intervention (ablate, patching, steer, clamp).

Interventions are hooks on the model's modules, so every forward pass of ``generate`` (the
prompt, then one pass per new token with the key/value cache) goes through them.
"""

from __future__ import annotations

import numpy as np
import torch

from .batches import chat_prompt, pad_batch
from .capture import embed
from .errors import LlmriError
from .interventions import steer, steering_vector
from .model import as_model, computing, is_causal_lm
from .probe import make_classifier
from .store import Scan


def generate(model, prompts, max_new_tokens: int = 64, chat: bool | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_p: float | None = None, seed: int = 0, system: str | None = None,
             batch_size: int = 16) -> str | list[str]:
    """Continue one prompt or a list of prompts; returns the new text (a string or a list).

    The chat template is applied when the tokenizer has one (``chat=None``); prompts are batched
    with left padding (batched equals one by one); greedy by default, and sampling
    (``do_sample=True``) is deterministic under ``seed``. Any intervention context around the
    call applies to every forward pass.

    >>> dec = llmri.load_model("default-decoder")                        # doctest: +SKIP
    >>> llmri.generate(dec, "What is the capital of France?")
    'The capital of France is Paris.'
    """

    model = as_model(model)
    if not is_causal_lm(model):
        raise LlmriError(f"generate: {model.name} is not a decoder with a language-model head")
    single = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                          and isinstance(prompts[0], dict))
    items = [prompts] if single else list(prompts)
    if not items:
        raise LlmriError("generate: no prompts given")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise LlmriError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise LlmriError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LlmriError(f"batch_size must be a positive integer, got {batch_size!r}")
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
            result = model.module.generate(**inputs, **kwargs)
            new = result[:, inputs["input_ids"].shape[1]:]
            for i, row in zip(batch, new.tolist()):
                out[i] = tok.decode(row, skip_special_tokens=True)
    return out[0] if single else out


PROBE_C = 0.01  # inverse L2 strength of the probe that scores steered generations


def steer_sweep(model, scan, positive, negative, layer: int, alphas, prompts, site: str = "resid",
                mode: str = "add", max_new_tokens: int = 40, probe_layer: int | None = None,
                seed: int = 0):
    """Generate every prompt under a range of steering strengths and score each generation.

    The steering vector is :func:`llmri.steering_vector` of the Scan (``positive`` minus
    ``negative``) at ``site``/``layer``. Each generation is read back by the model, unsteered and
    pooled as the Scan was, at ``probe_layer`` (default ``layer``), and a logistic-regression
    probe trained on the Scan's ``positive`` vs ``negative`` documents (standardised, L2 with
    ``C = 0.01`` so its probabilities stay graded) gives the probability of ``positive``.
    Returns a DataFrame: prompt, alpha, generation, p_positive (NaN for an empty generation).
    """
    import pandas as pd

    model = as_model(model)
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    try:
        alphas = [float(a) for a in alphas]
    except (TypeError, ValueError):
        raise LlmriError(f"alphas {alphas!r}: expected numbers") from None
    if not alphas or not prompts:
        raise LlmriError("steer_sweep: give at least one alpha and one prompt")
    vector = steering_vector(scan, positive, negative, layer, site=site, model=model)
    probe_layer = layer if probe_layer is None else probe_layer
    names = [positive] if isinstance(positive, str) else list(positive)
    negs = [negative] if isinstance(negative, str) else list(negative)
    keep = np.isin(scan.labels, [scan.label_names.index(c) for c in names + negs])
    y = np.isin(scan.labels, [scan.label_names.index(c) for c in names])[keep]
    # With far more dimensions than documents, a logistic probe separates its training set and its
    # probabilities saturate at 0 or 1 on any new text; a strong L2 penalty keeps them graded.
    clf = make_classifier("logistic", seed=seed, C=PROBE_C).fit(scan.activations(probe_layer, site)[keep], y)
    rows = []
    for a in alphas:
        with steer(model, {f"{site}.{layer}": vector}, alpha=a, mode=mode):
            outs = generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)
        rows += [{"prompt": p, "alpha": a, "generation": g} for p, g in zip(prompts, outs)]
    df = pd.DataFrame(rows)
    scored = [i for i, g in enumerate(df["generation"]) if g.strip()]
    p = np.full(len(df), np.nan)
    if scored:
        X = embed(model, [df["generation"][i] for i in scored], f"{site}.{probe_layer}", pool=scan.settings["pool"])
        p[scored] = clf.predict_proba(X)[:, 1]
    df["p_positive"] = p
    df.attrs.update(positive=", ".join(names), negative=", ".join(negs), site=f"{site}.{layer}",
                    probe_layer=probe_layer, mode=mode, vector_norm=float(np.linalg.norm(vector)))
    return df

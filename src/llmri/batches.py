"""Batching primitives shared by every room that runs text through a model: tokenising, length-sorted
batches under a token budget, padding with the right positions, pooling over real tokens, and the
chat prompt a decoder reads.

>>> ids, _ = tokenize(model, ["a text", "another"], model.max_length)       # doctest: +SKIP
>>> kwargs, mask = pad_batch(model, ids)
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import LlmriError
from .model import Model


def tokenize(model: Model, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids per document, truncated to ``max_length``; also how many were truncated."""
    tok = model.tokenizer
    ids = tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        cut = tok([texts[i] for i in long], add_special_tokens=True, truncation=True,
                  max_length=max_length, verbose=False)["input_ids"]
        for i, x in zip(long, cut):
            ids[i] = x
    for i, x in enumerate(ids):
        if not x:
            raise LlmriError(f"document {i}: the tokenizer produced no tokens")
    return [list(map(int, x)) for x in ids], len(long)


def default_pool(model: Model) -> str:
    """``mean-nosink`` for decoders (their first token holds an attention sink whose residual norm
    is orders of magnitude above the others'), ``mean`` for encoders."""
    return "mean-nosink" if model.adapter.causal else "mean"


def pad_batch(model: Model, seqs: list[list[int]], side: str | None = None) -> tuple[dict, torch.Tensor]:
    """Forward kwargs for token id lists padded on ``side``, and the real-token mask.

    By default the tokenizer's side: with left padding, models that take position ids get them
    counted from each document's first real token, and models that cannot (positions always
    0..T-1) are padded on the right. An explicit ``side`` is always honoured (generation pads
    on the left and lets ``generate`` derive positions from the attention mask).
    """
    if side is None:
        left = (getattr(model.tokenizer, "padding_side", "right") == "left"
                and model.adapter.positions != "none")
    else:
        left = side == "left"
    T = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), T), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for r, x in enumerate(seqs):
        sl = slice(T - len(x), T) if left else slice(0, len(x))
        input_ids[r, sl] = torch.tensor(x)
        mask[r, sl] = True
    dev = model.device
    kwargs = dict(input_ids=input_ids.to(dev), attention_mask=mask.long().to(dev))
    if left and model.adapter.positions == "ids":
        kwargs["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0).to(dev)
    return kwargs, mask.to(dev)


def plan_batches(lengths: np.ndarray, batch_tokens: int) -> list[list[int]]:
    """Length-sorted batches (longest first) whose padded size stays within ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = int(lengths[cur[0]]) if cur else int(lengths[i])
        if cur and (len(cur) + 1) * longest > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``x`` ``[batch, tokens, dim]`` over the real tokens of ``mask`` ``[batch, tokens]``.

    ``mean`` averages every real token (special tokens included); ``mean-nosink`` averages every
    real token but the first, where decoders park a massive attention-sink activation (a
    one-token document keeps its token); ``first``/``last`` take the first/last real token
    whatever the padding side, ``max`` is the element-wise maximum.
    """
    xf = x.float()
    if how == "mean-nosink":
        rows = torch.arange(x.shape[0], device=x.device)
        rest = mask.clone()
        rest[rows, mask.int().argmax(1)] = False
        mask = torch.where(rest.any(1, keepdim=True), rest, mask)
        how = "mean"
    if how == "mean":
        m = mask.unsqueeze(-1).to(xf.dtype)
        return (xf * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return xf.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    rows = torch.arange(x.shape[0], device=x.device)
    if how == "first":
        idx = mask.int().argmax(1)
    else:
        idx = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
    return xf[rows, idx]


class Batches:
    """A corpus tokenized, length-sorted and padded once, reused by every measured forward pass."""

    def __init__(self, model: Model, texts: list[str], batch_tokens: int):
        ids, _ = tokenize(model, texts, model.max_length)
        lengths = np.asarray([len(x) for x in ids])
        self.batches = [(b, *pad_batch(model, [ids[d] for d in b])) for b in plan_batches(lengths, batch_tokens)]
        self.n = len(texts)


def chat_prompt(model: Model, prompt, chat: bool | None = None, system: str | None = None) -> str:
    """The text the model reads for ``prompt``: wrapped in the tokenizer's chat template when it has
    one (``chat=None``) or when ``chat=True``; as it is with ``chat=False``.

    ``prompt`` is a string (one user message) or a list of ``{"role", "content"}`` messages.
    """
    tok = model.tokenizer
    has_template = bool(getattr(tok, "chat_template", None))
    if chat is None:
        chat = has_template
    if isinstance(prompt, (list, tuple)):
        if not chat:
            raise LlmriError("generate: a list of chat messages needs chat=True")
        messages = list(prompt)
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise LlmriError("generate: a chat prompt is a list of {'role': ..., 'content': ...} messages")
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        raise LlmriError(f"generate: a prompt is a string or a list of chat messages, got {type(prompt).__name__}")
    if not chat:
        return prompt
    if not has_template:
        raise LlmriError(f"generate: chat=True but the tokenizer of {model.name} has no chat template; "
                         "pass chat=False")
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

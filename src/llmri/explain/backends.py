"""Language-model backends of the explain loop, with an on-disk call cache.

Two operations, both cached on disk:

- ``chat(messages)``: a greedy (or sampled, under a seed) reply.
- ``value_logprobs(messages, pieces, candidates)``: the assistant's reply is prefilled with
  ``pieces``; after every piece but the last the model's next-token log-probabilities of the
  ``candidates`` (e.g. "0".."10") are read, all in one forward pass. This is what Bills et al.'s
  "all at once" simulator needs. :class:`LocalLM` always supports it; :class:`OpenAICompatible`
  only when the server returns prompt log-probabilities on ``/v1/completions``
  (``echo=True, logprobs=k``, e.g. vLLM); otherwise scorers fall back to parsed replies.
- ``word_logprobs(messages, prefill, words)``: the log-probability that the reply, prefilled
  with ``prefill``, goes on with (the first token of) each word, from one forward pass: what the
  ``pmi`` simulator needs. Only :class:`LocalLM` has it (a server's top-k log-probabilities do
  not cover arbitrary words).

Every call is keyed by (backend kind, model, operation, prompt, parameters) and stored as one
JSON file written atomically (``llmri.store``), so a rerun or an interrupted run replays what is
already paid for. API keys come only from an environment variable and are never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import LlmriError
from ..model import as_model
from ..precision import computing, precision_used
from ..store import atomic_write_json, json_safe
from ..threads import configure_threads
from .prompts import render_plain

log = logging.getLogger("llmri.explain")


class CallCache:
    """One JSON file per call under ``folder/ab/<key>.json``; unreadable files count as misses."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self._path(key)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("%s: unreadable cache entry, calling again", p)
            return None

    def put(self, key: str, value: dict) -> None:
        atomic_write_json(self._path(key), json_safe(value))   # -inf log-probabilities as null, read back as -inf


class Backend:
    """Base class: caching and token accounting around ``_chat`` and ``_value_logprobs``."""

    kind = "backend"
    concurrency = 1

    def __init__(self, cache_dir=None, price_per_mtok: tuple[float, float] = (0.0, 0.0)):
        if not (isinstance(price_per_mtok, (tuple, list)) and len(price_per_mtok) == 2
                and all(isinstance(x, (int, float)) and x >= 0 for x in price_per_mtok)):
            raise LlmriError(f"price_per_mtok must be (input, output) prices per million tokens, got {price_per_mtok!r}")
        self.cache_dir = cache_dir
        self.price_per_mtok = tuple(float(x) for x in price_per_mtok)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.reset_stats()

    # --- a copy for another process (a Ray worker): settings only, no lock, model or client ---
    _runtime = ("_lock", "_local")

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._runtime}
        if state.get("cache_dir") is not None:     # the worker's working folder may differ
            state["cache_dir"] = str(Path(state["cache_dir"]).resolve())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()
        for name, empty in (("_model", None), ("_prefix", (None, None, None)), ("_client", None)):
            if name in self._runtime:
                setattr(self, name, empty)

    # --- what subclasses provide ---
    @property
    def model_name(self) -> str:
        raise NotImplementedError

    @property
    def has_logprobs(self) -> bool:
        return False

    def _chat(self, messages, max_tokens, temperature, seed, prefill="") -> dict:
        raise NotImplementedError

    def _value_logprobs(self, messages, pieces, candidates) -> dict:
        raise NotImplementedError

    @property
    def has_word_logprobs(self) -> bool:
        return False

    def _word_logprobs(self, messages, prefill, words) -> dict:
        raise NotImplementedError

    # --- cache and accounting ---
    def reset_stats(self) -> None:
        """``calls`` made and ``cache_hits``; ``prompt_tokens``, ``completion_tokens`` and ``cost`` of
        every answer used (cached ones at what they cost when made); ``spent_*``: of the calls made."""
        self.stats = dict(calls=0, cache_hits=0, prompt_tokens=0, completion_tokens=0, cost=0.0,
                          spent_prompt_tokens=0, spent_completion_tokens=0, spent_cost=0.0)

    @contextlib.contextmanager
    def meter(self):
        """Count the tokens and cost of the calls made by this thread inside the block.

        >>> with backend.meter() as used:                                  # doctest: +SKIP
        ...     backend.chat(messages)
        >>> used["prompt_tokens"]
        """
        used = dict(prompt_tokens=0, completion_tokens=0, cost=0.0)
        self._local.meter = used
        try:
            yield used
        finally:
            self._local.meter = None

    def set_cache(self, folder) -> None:
        """Cache calls under ``folder`` (used by :func:`llmri.explain` when none was given)."""
        self.cache_dir = folder

    def _identity(self) -> dict:
        return {"kind": self.kind, "model": self.model_name}

    def _cached(self, op: str, payload: dict, fn) -> dict:
        key = hashlib.sha256(json.dumps({"backend": self._identity(), "op": op, "payload": payload},
                                        sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        cache = CallCache(self.cache_dir) if self.cache_dir is not None else None
        hit = cached = cache.get(key) if cache is not None else None
        if hit is None:
            hit = fn()
            if cache is not None:
                cache.put(key, hit)
            with self._lock:
                self.stats["calls"] += 1
        else:
            with self._lock:
                self.stats["cache_hits"] += 1
        p, c = int(hit.get("prompt_tokens", 0)), int(hit.get("completion_tokens", 0))
        use = dict(prompt_tokens=p, completion_tokens=c,
                   cost=(p * self.price_per_mtok[0] + c * self.price_per_mtok[1]) / 1e6)
        with self._lock:
            for k, v in use.items():
                self.stats[k] += v
                if hit is not cached:          # a call made now, not an answer from the cache
                    self.stats[f"spent_{k}"] += v
        meter = getattr(self._local, "meter", None)
        if meter is not None:
            for k, v in use.items():
                meter[k] += v
        return hit

    def chat(self, messages: list[dict], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
             prefill: str = "") -> str:
        """The reply to ``messages`` (cached). ``prefill`` starts the assistant's reply where the
        backend can (the local one); the returned text is what follows it."""
        payload = dict(messages=messages, max_tokens=int(max_tokens), temperature=float(temperature), seed=int(seed))
        if prefill:
            payload["prefill"] = prefill
        return self._cached("chat", payload, lambda: self._chat(messages, max_tokens, temperature, seed, prefill))["text"]

    def value_logprobs(self, messages: list[dict], pieces: list[str], candidates) -> np.ndarray:
        """Log-probabilities ``[len(pieces) - 1, len(candidates)]`` of each candidate as the next
        token after every piece but the last (``-inf`` where the backend has none)."""
        if not self.has_logprobs:
            raise LlmriError(f"backend {self.kind} ({self.model_name}) gives no log-probabilities")
        payload = dict(messages=messages, pieces=list(pieces), candidates=list(candidates))
        out = self._cached("value_logprobs", payload,
                           lambda: self._value_logprobs(messages, list(pieces), list(candidates)))
        arr = np.array([[(-np.inf if v is None else v) for v in row] for row in out["logprobs"]], dtype=np.float64)
        return arr.reshape(len(pieces) - 1, len(candidates))

    def word_logprobs(self, messages: list[dict], prefill: str, words: list[str]) -> np.ndarray:
        """Log-probability ``[len(words)]`` that the reply, prefilled with ``prefill``, continues
        with the first token of each word (whitespace stripped); ``-inf`` for an empty word."""
        if not self.has_word_logprobs:
            raise LlmriError(f"backend {self.kind} ({self.model_name}) gives no next-token log-probabilities "
                             "of arbitrary words; use simulator='all_at_once'")
        payload = dict(messages=messages, prefill=prefill, words=list(words))
        out = self._cached("word_logprobs", payload, lambda: self._word_logprobs(messages, prefill, list(words)))
        return np.array([-np.inf if v is None else v for v in out["logprobs"]], dtype=np.float64)


# ------------------------------------------------------------------ local
class LocalLM(Backend):
    """A local chat model run through llmri (default: ``default-decoder``).

    Log-probabilities come from one forward pass of the prompt. ``chat=None`` uses the
    tokenizer's chat template when it has one and plain text otherwise; ``chat=True`` requires
    a template. ``progress``: a bar of each reply's tokens while it is generated, on stderr
    (None: only when stderr is a terminal); replies are the same either way.

    >>> lm = LocalLM("default-decoder")                                   # doctest: +SKIP
    >>> lm.chat([{"role": "user", "content": "Name a planet."}], max_tokens=8)
    """

    kind = "local"
    _runtime = ("_lock", "_local", "_model", "_prefix")

    def __init__(self, model="default-decoder", chat: bool | None = None, device: str = "auto",
                 dtype: str = "auto", cache_dir=None, progress: bool | None = None):
        super().__init__(cache_dir=cache_dir)
        if chat not in (None, True, False):
            raise LlmriError(f"chat must be None (auto), True or False, got {chat!r}")
        if progress not in (None, True, False):
            raise LlmriError(f"progress must be None (when stderr is a terminal), True or False, got {progress!r}")
        self.progress = progress
        self._spec = model
        self._model = None
        self._prefix = (None, None, None)        # (prefix ids, their key/value cache, last logits)
        self._chat_mode = chat
        self.device, self.dtype = device, dtype

    @property
    def model(self):
        if self._model is None:
            configure_threads()
            m = as_model(self._spec, device=self.device, dtype=self.dtype)
            template = getattr(m.tokenizer, "chat_template", None)
            if self._chat_mode is True and not template:
                raise LlmriError(f"model {m.name!r} has no chat template; pass chat=False to prompt it with plain text")
            if self._chat_mode is None:
                self._chat_mode = bool(template)
            self._model = m
        return self._model

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def has_logprobs(self) -> bool:
        return True

    def _identity(self) -> dict:
        p = precision_used(self.model, "lm")   # bf16 answers are cached apart; float32 keys are unchanged
        return {"kind": self.kind, "model": self.model.name, "fingerprint": self.model.fingerprint,
                "chat": self._chat_mode, **({} if p == "float32" else {"precision": p})}

    def _prefix_ids(self, messages) -> list[int]:
        tok = self.model.tokenizer
        if self._chat_mode:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return [int(i) for i in tok(render_plain(messages), add_special_tokens=True)["input_ids"]]

    def _check_length(self, n: int) -> None:
        if n > self.model.max_length:
            raise LlmriError(f"a prompt of {n} tokens is longer than {self.model.name}'s limit of "
                             f"{self.model.max_length}; use shorter windows (window=) or fewer examples")

    def _chat(self, messages, max_tokens, temperature, seed, prefill="") -> dict:
        import torch

        m = self.model
        ids = self._prefix_ids(messages)
        if prefill:
            ids += m.tokenizer(prefill, add_special_tokens=False)["input_ids"]
        self._check_length(len(ids) + max_tokens)
        x = torch.tensor([ids], device=m.device)
        kw = dict(max_new_tokens=int(max_tokens), pad_token_id=m.tokenizer.pad_token_id)
        if temperature > 0:
            torch.manual_seed(seed)
            kw.update(do_sample=True, temperature=float(temperature))
        else:
            kw.update(do_sample=False)
        bar = tqdm(total=int(max_tokens), unit="tok", desc="local LM reply", leave=False, file=sys.stderr,
                   dynamic_ncols=True, disable=None if self.progress is None else not self.progress)
        if not bar.disable:
            from ..generate import TokenCounter

            kw["streamer"] = TokenCounter(bar.update)
        with bar, torch.no_grad(), computing(m, "lm"):
            out = m.module.generate(x, attention_mask=torch.ones_like(x), **kw)
        new = out[0, len(ids):].tolist()
        eos = m.tokenizer.eos_token_id
        if eos is not None and eos in new:
            new = new[:new.index(eos)]
        text = m.tokenizer.decode(new, skip_special_tokens=True)
        return dict(text=text, prompt_tokens=len(ids), completion_tokens=len(new))

    def candidate_ids(self, candidates) -> list[int | None]:
        """The token id of each candidate string, None where it is not a single token."""
        tok = self.model.tokenizer
        out = []
        for c in candidates:
            ids = tok(c, add_special_tokens=False)["input_ids"]
            out.append(int(ids[0]) if len(ids) == 1 and ids[0] != tok.unk_token_id else None)
        return out

    @property
    def has_word_logprobs(self) -> bool:
        return True

    def _word_logprobs(self, messages, prefill, words) -> dict:
        import torch

        m = self.model
        tok = m.tokenizer
        ids = self._prefix_ids(messages) + tok(prefill, add_special_tokens=False)["input_ids"]
        self._check_length(len(ids))
        x = torch.tensor([ids], device=m.device)
        with torch.inference_mode(), computing(m, "lm"):
            lp = torch.log_softmax(m.module(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float(), -1)
        lp = lp.cpu().numpy()
        rows = []
        for w in words:
            first = tok(w.strip(), add_special_tokens=False)["input_ids"][:1] if w.strip() else []
            rows.append(float(lp[first[0]]) if first else None)
        return dict(logprobs=rows, prompt_tokens=len(ids), completion_tokens=0)

    def _value_logprobs(self, messages, pieces, candidates) -> dict:
        import copy

        import torch

        m = self.model
        tok = m.tokenizer
        prefix = self._prefix_ids(messages)
        ids, query = list(prefix), []
        for i, piece in enumerate(pieces):
            ids += tok(piece, add_special_tokens=False)["input_ids"]
            if i < len(pieces) - 1:
                query.append(len(ids) - 1)           # logits here predict the token after the piece
        self._check_length(len(ids))
        cand = self.candidate_ids(candidates)
        dev = m.device
        with torch.inference_mode(), computing(m, "lm"):
            # The messages (system prompt, explanation) are shared by every window of a unit: their
            # key/value cache is computed once and reused for each window's pieces.
            if self._prefix[0] != prefix:
                x = torch.tensor([prefix], device=dev)
                out = m.module(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
                self._prefix = (prefix, out.past_key_values, out.logits[0, -1:].float())
            _, cache, last = self._prefix
            suffix = torch.tensor([ids[len(prefix):]], device=dev)
            if suffix.shape[1]:
                mask = torch.ones((1, len(ids)), dtype=torch.long, device=dev)
                logits = m.module(input_ids=suffix, attention_mask=mask, past_key_values=copy.deepcopy(cache),
                                  use_cache=True).logits[0].float()
                logits = torch.cat([last, logits])   # row r predicts token len(prefix) + r
            else:
                logits = last
            rows_at = [q - len(prefix) + 1 for q in query]
            lp = torch.log_softmax(logits[rows_at], -1).cpu().numpy()
        rows = [[(float(lp[r, c]) if c is not None else None) for c in cand] for r in range(len(query))]
        return dict(logprobs=rows, prompt_tokens=len(ids), completion_tokens=0)


# ------------------------------------------------------------------ HTTP
class OpenAICompatible(Backend):
    """Any server that speaks the OpenAI API (vLLM, ``transformers serve``, llama.cpp's server,
    Ollama, OpenAI), through the official ``openai`` client.

    The API key is read from the environment variable ``api_key_env`` when a call is made; it is
    never stored in the cache, the results or the logs. ``completion_logprobs=True`` reads
    simulator distributions from ``/v1/completions`` with ``echo`` (servers that support it);
    otherwise the scorers parse numbers from chat replies. Retries with exponential backoff and
    the timeout are the client's; ``concurrency`` calls run at once.

    >>> be = OpenAICompatible("http://localhost:8080/v1", "smollm2")      # doctest: +SKIP
    """

    kind = "openai-compatible"
    _runtime = ("_lock", "_local", "_client")

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0,
                 max_retries: int = 3, concurrency: int = 4, completion_logprobs: bool = False,
                 top_logprobs: int = 20, price_per_mtok: tuple[float, float] = (0.0, 0.0), cache_dir=None):
        super().__init__(cache_dir=cache_dir, price_per_mtok=price_per_mtok)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise LlmriError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise LlmriError("model: give the model name the server serves")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise LlmriError(f"timeout must be a positive number of seconds, got {timeout!r}")
        for name, v in (("max_retries", max_retries), ("concurrency", concurrency), ("top_logprobs", top_logprobs)):
            if not isinstance(v, int) or v < (0 if name == "max_retries" else 1):
                raise LlmriError(f"{name} must be a {'non-negative' if name == 'max_retries' else 'positive'} integer, got {v!r}")
        self.base_url, self._model_name = base_url.rstrip("/"), model
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.concurrency = float(timeout), max_retries, concurrency
        self.completion_logprobs, self.top_logprobs = bool(completion_logprobs), top_logprobs
        self._client = None

    def __repr__(self) -> str:
        return f"OpenAICompatible({self.base_url!r}, {self._model_name!r}, api_key_env={self.api_key_env!r})"

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def has_logprobs(self) -> bool:
        return self.completion_logprobs

    @property
    def client(self):
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise LlmriError("the openai backend needs the openai package: pip install 'llmri[explain]'") from None
            key = "not-needed"
            if self.api_key_env:
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise LlmriError(f"environment variable {self.api_key_env} is not set (it holds the API key)")
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                         max_retries=self.max_retries)
        return self._client

    def _call(self, fn, **kw):
        import openai

        try:
            return fn(**kw)
        except openai.APITimeoutError:
            raise LlmriError(f"{self.base_url}: no answer within {self.timeout:g} s "
                             f"(after {self.max_retries} retries)") from None
        except openai.APIConnectionError:
            raise LlmriError(f"{self.base_url}: cannot connect to the server") from None
        except openai.APIStatusError as e:
            raise LlmriError(f"{self.base_url}: the server answered HTTP {e.status_code} "
                             f"({_first_line(getattr(e, 'message', '') or str(e))})") from None
        except openai.OpenAIError as e:
            raise LlmriError(f"{self.base_url}: {type(e).__name__} ({_first_line(str(e))})") from None

    def _chat(self, messages, max_tokens, temperature, seed, prefill="") -> dict:
        # Chat APIs have no portable way to prefill the reply: the prompt asks for the continuation.
        r = self._call(self.client.chat.completions.create, model=self._model_name, messages=messages,
                       max_tokens=int(max_tokens), temperature=float(temperature), seed=int(seed))
        if not getattr(r, "choices", None):
            raise LlmriError(f"{self.base_url}: the reply has no choices")
        usage = getattr(r, "usage", None)
        return dict(text=r.choices[0].message.content or "",
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))

    def _value_logprobs(self, messages, pieces, candidates) -> dict:
        prefix = render_plain(messages)
        ends, pos = [], len(prefix)
        for p in pieces[:-1]:
            pos += len(p)
            ends.append(pos)
        r = self._call(self.client.completions.create, model=self._model_name,
                       prompt=prefix + "".join(pieces), echo=True, logprobs=self.top_logprobs,
                       max_tokens=1, temperature=0.0)
        lp = r.choices[0].logprobs if getattr(r, "choices", None) else None
        if lp is None or not getattr(lp, "top_logprobs", None) or not getattr(lp, "text_offset", None):
            raise LlmriError(f"{self.base_url}: the server returned no prompt log-probabilities; "
                             "use completion_logprobs=False")
        starts = list(lp.text_offset)
        rows = []
        for q in ends:
            i = int(np.searchsorted(starts, q, side="left"))     # the first token starting at q
            top = lp.top_logprobs[i] if i < len(starts) and starts[i] == q else None
            top = dict(top or {})
            rows.append([float(top[c]) if c in top else None for c in candidates])
        usage = getattr(r, "usage", None)
        return dict(logprobs=rows, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))


def _first_line(s: str) -> str:
    s = str(s).strip()
    return (s.splitlines()[0] if s else "no detail")[:200]

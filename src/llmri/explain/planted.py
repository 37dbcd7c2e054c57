"""Planted units: synthetic per-token activations that fire exactly on one kind of word, with the
explanation that is right for each. A simulator that reads explanations scores every planted
unit higher with its own explanation than with another unit's (see
benchmarks/explain_simulators.py and tests/test_explain_default.py).
"""

from __future__ import annotations

import numpy as np

MONTHS = ("January", "March", "April", "May", "June", "July", "August", "October", "December")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange", "grey")
NAMES = ("Anna", "Peter", "Maria", "John", "Lucy", "Paris", "London", "Oslo", "David", "Emma")
_THINGS = ("lamps", "chairs", "cups", "books", "boxes", "coats", "plates", "shoes")
_VERBS = ("sold", "painted", "moved", "carried", "found", "cleaned")
_TEMPLATES = (
    "In {M} {N} {V} {d} {C} {T} and {d} {C} {T} near the old market .",
    "{N} said that the {C} {T} arrived in {M} , and the rest came later that week .",
    "By {M} we had {d} {T} , {d} {T} and a few {C} ones left in the shop .",
    "The {C} door was open , so {N} and {N} {V} the {T} inside before dinner .",
    "Every {M} the town of {N} hosts a fair with {d} stalls and music in the square .",
    "She {V} the {C} {T} slowly , then waited for the bus under the tall trees .",
)
#: unit name -> its right explanation (phrased to follow "the main thing this neuron does is find")
EXPLANATIONS = {"digits": "numbers and digits", "and": 'the word "and"', "months": "names of months of the year",
                "colours": "colour words such as red or blue", "names": "names of people and places"}


def planted_units(tokenizer, n_docs: int = 48, seed: int = 0):
    """Documents of filled-in templates and one planted unit per :data:`EXPLANATIONS` entry.

    Returns ``(docs, offsets, acts, names)``: each document's token strings, the document
    offsets into the flat token order, activations ``[n_tokens, n_units]`` (4.0 on every token
    of a word of the unit's kind, else 0) and the unit names. Words are tokenized one by one
    (with their leading space), so every token belongs to exactly one word.

    >>> docs, offsets, acts, names = planted_units(model.tokenizer)    # doctest: +SKIP
    >>> names
    ['digits', 'and', 'months', 'colours', 'names']
    """
    rng = np.random.default_rng(seed)
    pools = {"{M}": (MONTHS, "months"), "{C}": (COLOURS, "colours"), "{N}": (NAMES, "names"),
             "{T}": (_THINGS, ""), "{V}": (_VERBS, ""), "{d}": (None, "digits")}
    names = list(EXPLANATIONS)
    docs, kinds = [], []
    for i in range(n_docs):
        words = []
        for t in (_TEMPLATES[i % len(_TEMPLATES)], _TEMPLATES[(5 * i + 1) % len(_TEMPLATES)]):
            for w in t.split():
                if w in pools:
                    pool, kind = pools[w]
                    words.append((str(rng.integers(2, 99)) if pool is None else str(rng.choice(pool)), kind))
                else:
                    words.append((w, "and" if w == "and" else ""))
        toks, ks = [], []
        for j, (w, kind) in enumerate(words):
            for k in tokenizer(w if j == 0 else " " + w, add_special_tokens=False)["input_ids"]:
                toks.append(tokenizer.decode([k]))
                ks.append(kind)
        docs.append(toks)
        kinds.extend(ks)
    kinds = np.asarray(kinds)
    acts = np.stack([4.0 * (kinds == n) for n in names], 1).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return docs, offsets, acts, names

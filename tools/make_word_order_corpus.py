"""Write the bundled word-order demo corpus from its grammatical sentences.

Each grammatical sentence (written for this project) gets a scrambled twin: the same words in a
seeded random order, so both categories use exactly the same vocabulary and only word order tells
them apart. Run from the repository root: ``python tools/make_word_order_corpus.py SENTENCES``,
where SENTENCES has one ``topic|sentence`` per line.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "llmri" / "data" / "word_order"


def scramble(sentence: str, rng: random.Random) -> str:
    """The words of ``sentence`` (final full stop set aside) in a random order, none left in place."""
    words = sentence.rstrip(".").split()
    order = list(range(len(words)))
    while any(i == j for i, j in enumerate(order)):  # a derangement: every word moves
        rng.shuffle(order)
    out = " ".join(words[j] for j in order)
    return out[0].upper() + out[1:] + "."


def main(path: str) -> None:
    rng = random.Random(12)
    lines = [ln.split("|", 1)[1].strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    for i, s in enumerate(lines, 1):
        for label, text in (("grammatical", s), ("scrambled", scramble(s, rng))):
            (OUT / label).mkdir(parents=True, exist_ok=True)
            (OUT / label / f"{i:02d}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])

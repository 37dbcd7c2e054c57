"""Corpus: labeled texts, read from Python lists, folders, CSV/TSV/JSONL files or HF datasets."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import LlmriError

TEXT_COLUMNS = ("text", "document", "content", "sentence", "abstract", "body")
LABEL_COLUMNS = ("label", "category", "class", "labels", "topic")


def _check_text(text, where: str) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        raise LlmriError(f"{where}: text is missing")
    if not isinstance(text, str):
        raise LlmriError(f"{where}: text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise LlmriError(f"{where}: text is empty")
    return text


class Corpus:
    """Labeled documents: ``texts``, integer ``labels`` and ``label_names``.

    Labels may be given as strings (their sorted unique values become ``label_names``)
    or as integers (with optional ``label_names``).

    >>> c = Corpus(["a cat", "a dog", "a star"], ["pets", "pets", "space"])
    >>> c.label_names, list(c.labels)
    (['pets', 'space'], [0, 0, 1])
    """

    def __init__(self, texts: Sequence[str], labels: Sequence | None = None,
                 label_names: Sequence[str] | None = None, *, source: str = "corpus"):
        texts = list(texts)
        if not texts:
            raise LlmriError(f"{source}: the corpus is empty (no documents)")
        for i, t in enumerate(texts):
            _check_text(t, f"{source}: document {i}")
        if labels is None:
            labels = ["all"] * len(texts)
        labels = list(labels)
        if len(labels) != len(texts):
            raise LlmriError(f"{source}: {len(texts)} texts but {len(labels)} labels")
        for i, lab in enumerate(labels):
            if lab is None or (isinstance(lab, str) and not lab.strip()):
                raise LlmriError(f"{source}: document {i}: label is missing")
        if all(isinstance(lab, (int, np.integer)) and not isinstance(lab, bool) for lab in labels):
            ints = np.asarray(labels, dtype=np.int64)
            if ints.min() < 0:
                raise LlmriError(f"{source}: integer labels must be >= 0, got {int(ints.min())}")
            n = int(ints.max()) + 1
            if label_names is None:
                label_names = [str(i) for i in range(n)]
            elif len(label_names) < n:
                raise LlmriError(f"{source}: label {n - 1} has no name in label_names "
                                 f"({len(label_names)} names given)")
            self.labels = ints
        else:
            strs = [str(lab) for lab in labels]
            names = sorted(set(strs)) if label_names is None else [str(x) for x in label_names]
            index = {name: i for i, name in enumerate(names)}
            for i, s in enumerate(strs):
                if s not in index:
                    raise LlmriError(f"{source}: document {i}: label {s!r} is not in label_names {names}")
            self.labels = np.asarray([index[s] for s in strs], dtype=np.int64)
            label_names = names
        self.texts: list[str] = texts
        self.label_names: list[str] = [str(x) for x in label_names]
        self.source = source

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={c}" for n, c in zip(self.label_names, self.counts()))
        return f"Corpus({len(self)} documents: {counts})"

    def counts(self) -> list[int]:
        """Number of documents per label, in ``label_names`` order."""
        return np.bincount(self.labels, minlength=len(self.label_names)).tolist()

    @property
    def fingerprint(self) -> str:
        """A stable hash of texts, labels and label names."""
        h = hashlib.sha256()
        h.update(json.dumps(self.label_names).encode())
        for text, lab in zip(self.texts, self.labels.tolist()):
            h.update(f"{lab}\x1f{len(text)}\x1f".encode())
            h.update(text.encode("utf-8"))
        return h.hexdigest()[:20]

    def subset(self, indices: Iterable[int]) -> "Corpus":
        """The documents at ``indices``, keeping every label name."""
        idx = list(indices)
        return Corpus([self.texts[i] for i in idx], [int(self.labels[i]) for i in idx],
                      self.label_names, source=self.source)

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_path(cls, path, text_column: str | None = None,
                  label_column: str | None = None) -> "Corpus":
        """Read a folder (one sub-folder of ``.txt`` files per label) or a CSV/TSV/JSONL file."""
        p = Path(path)
        if not p.exists():
            raise LlmriError(f"{p}: no such file or folder")
        if p.is_dir():
            return cls._from_folder(p)
        suffix = p.suffix.lower()
        if suffix in (".csv", ".tsv"):
            header, rows = _read_delimited(p, "\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".ndjson"):
            header, rows = _read_jsonl(p)
        else:
            raise LlmriError(f"{p}: unsupported file type {suffix!r}; use a folder of label "
                             "sub-folders, or a .csv, .tsv or .jsonl file")
        return cls._from_rows(p, header, rows, text_column, label_column)

    @classmethod
    def _from_folder(cls, root: Path) -> "Corpus":
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        texts, labels = [], []
        for d in folders:
            for f in sorted(d.glob("*.txt")):
                texts.append(_check_text(_read_utf8(f), str(f)))
                labels.append(d.name)
        if not texts:
            raise LlmriError(f"{root}: the corpus is empty: expected one sub-folder per label "
                             "holding .txt documents")
        return cls(texts, labels, source=str(root))

    @classmethod
    def _from_rows(cls, p: Path, header: list[str], rows, text_column, label_column) -> "Corpus":
        tcol = _pick_column(p, header, text_column, TEXT_COLUMNS, "text", "--text-column")
        lcol = _pick_column(p, header, label_column, LABEL_COLUMNS, "label", "--label-column")
        texts, labels = [], []
        for where, row in rows:
            texts.append(_check_text(row.get(tcol), f"{p} {where}"))
            lab = row.get(lcol)
            if lab is None or (isinstance(lab, str) and not lab.strip()):
                raise LlmriError(f"{p} {where}: label is missing (column {lcol!r})")
            labels.append(str(lab).strip() if not isinstance(lab, (int, np.integer)) else str(lab))
        if not texts:
            raise LlmriError(f"{p}: the corpus is empty (no rows)")
        return cls(texts, labels, source=str(p))

    @classmethod
    def from_dataset(cls, ds, text_column: str = "text", label_column: str = "label") -> "Corpus":
        """Read a Hugging Face ``datasets.Dataset`` (string or ClassLabel labels)."""
        cols = list(getattr(ds, "column_names", []) or [])
        for col, what in ((text_column, "text"), (label_column, "label")):
            if col not in cols:
                raise LlmriError(f"dataset: no {what} column {col!r}; columns are {cols}")
        feature = ds.features.get(label_column) if hasattr(ds, "features") else None
        names = getattr(feature, "names", None)
        texts = list(ds[text_column])
        labels = list(ds[label_column])
        if names is not None:
            return cls(texts, [int(x) for x in labels], list(names), source="dataset")
        return cls(texts, [str(x) if x is not None else None for x in labels], source="dataset")


def _read_utf8(f: Path) -> str:
    try:
        return f.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LlmriError(f"{f}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None


def _pick_column(p, header, wanted, defaults, what, flag) -> str:
    if wanted is not None:
        if wanted not in header:
            raise LlmriError(f"{p}: no {what} column {wanted!r}; columns are {header}")
        return wanted
    for c in defaults:
        if c in header:
            return c
    lower = {h.lower(): h for h in header}
    for c in defaults:
        if c in lower:
            return lower[c]
    raise LlmriError(f"{p}: no {what} column found (tried {', '.join(defaults)}); "
                     f"columns are {header}; name one with {flag}")


def _read_delimited(p: Path, delimiter: str):
    text = _read_utf8(p)
    lines = text.splitlines(keepends=True)
    if lines and delimiter not in lines[0]:
        # a single column, or another delimiter: sniff it from the first lines
        try:
            delimiter = csv.Sniffer().sniff("".join(lines[:20]), delimiters=",;\t|").delimiter
        except csv.Error:
            pass
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = list(reader.fieldnames or [])
    if not header:
        raise LlmriError(f"{p}: the file is empty (no header row)")
    rows = []
    for row in reader:
        rows.append((f"line {reader.line_num}", row))
    return header, rows


def _read_jsonl(p: Path):
    text = _read_utf8(p)
    header: list[str] = []
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlmriError(f"{p} line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise LlmriError(f"{p} line {n}: expected a JSON object, got {type(obj).__name__}")
        for k in obj:
            if k not in header:
                header.append(k)
        rows.append((f"line {n}", obj))
    return header, rows


DEMO_CORPORA = {"word_order": "grammatical sentences and the same words scrambled (60 + 60)",
                "topics": "paragraphs on astronomy, cooking and football (32 each)",
                "reviews": "short positive and negative reviews of the same things (30 + 30)"}


def demo_corpus(name: str = "word_order") -> Corpus:
    """A bundled demo corpus, written for this project.

    ``"word_order"`` (the default, used by ``llmri demo``): 60 sentences on astronomy, cooking
    and football labelled ``grammatical``, each with a ``scrambled`` twin holding exactly the
    same words in a random order. The two categories share their vocabulary, so the embedding
    layer barely tells them apart and deeper layers do: the layers differ. ``"topics"``: 96
    paragraphs on three topics, separable by vocabulary alone at every layer.

    >>> c = demo_corpus()
    >>> c.label_names, c.counts()
    (['grammatical', 'scrambled'], [60, 60])
    """
    return Corpus.from_path(demo_corpus_path(name))


def demo_corpus_path(name: str = "word_order") -> Path:
    """The folder of a bundled demo corpus (one sub-folder per label), e.g. to copy it out."""
    if name not in DEMO_CORPORA:
        raise LlmriError(f"demo corpus {name!r} is not one of {', '.join(DEMO_CORPORA)}")
    return Path(__file__).parent / "data" / ("demo" if name == "topics" else name)


def reviews_corpus() -> Corpus:
    """The bundled reviews corpus: 30 positive and 30 negative short reviews of the same kinds of
    things (films, restaurants, hotels, gadgets, books, trips), written for this project; each
    positive review has a negative counterpart about the same thing. Used by the steering examples.
    The same as ``demo_corpus("reviews")``."""
    return demo_corpus("reviews")


# Real English prose that ships offline: the reStructuredText sources of the Python documentation
# in Debian's ``python3-doc`` package (PSF licence), installed by ``setup.sh --test``. About 400k
# words of modern technical English (tutorial, how-tos, FAQ, language reference, what's new,
# library reference) once code, tables and directives are stripped: enough for SAE training runs
# of a few hundred thousand tokens, which the demo corpora (about 5k tokens) are not.
ENGLISH_SECTIONS = ("tutorial", "howto", "faq", "reference", "whatsnew", "library")
_RST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_RULE = re.compile(r"([=\-~*^#\"'`+])\1{2,}")


def _python_doc_root() -> Path | None:
    found = sorted(Path("/usr/share/doc").glob("python3*/html/_sources"))
    return found[-1] if found else None


def _rst_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one reST file: unindented blocks that are not directives, headings
    or code, with inline markup reduced to its text; paragraphs under 12 words are dropped."""
    blocks, cur = [], []
    for line in text.splitlines():
        if not line.strip() or line[0] in " \t" or line.startswith(".."):
            if cur:
                blocks.append(cur)
            cur = []
        elif _RST_RULE.fullmatch(line.strip()):
            cur = []                                    # the line above was a heading
        else:
            cur.append(line.strip())
    if cur:
        blocks.append(cur)
    out = []
    for b in blocks:
        s = _RST_ROLE.sub(r"\1", " ".join(b))
        s = re.sub(r"``([^`]*)``", r"\1", s)
        s = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", s)
        s = re.sub(r"\*\*([^*]+)\*\*|\*([^*]+)\*", lambda m: m.group(1) or m.group(2), s)
        s = re.sub(r"`([^`]*)`_*", r"\1", s).replace("::", ":")
        s = re.sub(r"\s+", " ", s).strip()
        if len(s.split()) >= 12 and s[-1] in ".:?!)" and not s.startswith(("+", "|", ">>>")):
            out.append(s)
    return out


def english_corpus(sections: Sequence[str] = ENGLISH_SECTIONS, max_docs: int | None = None,
                   seed: int = 0) -> Corpus:
    """Real English text for SAE training and explanation runs: the paragraphs of the Python
    documentation shipped by Debian's ``python3-doc`` package, labelled by section (``tutorial``,
    ``howto``, ``faq``, ``reference``, ``whatsnew``, ``library``). About 10,000 paragraphs,
    400k words (about 500k tokens for SmolLM2's tokenizer). ``max_docs`` keeps a seeded random
    sample of that many paragraphs, in corpus order."""
    root = _python_doc_root()
    if root is None:
        raise LlmriError("english_corpus needs Debian's python3-doc package "
                         "(/usr/share/doc/python3*/html/_sources): apt-get install python3-doc, "
                         "or run setup.sh --test")
    unknown = [s for s in sections if not (root / s).is_dir()]
    if unknown or not sections:
        raise LlmriError(f"english_corpus: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ENGLISH_SECTIONS)}")
    texts, labels = [], []
    for sec in sections:
        for f in sorted((root / sec).rglob("*.rst.txt")):
            for p in _rst_paragraphs(f.read_text(encoding="utf-8", errors="replace")):
                texts.append(p)
                labels.append(sec)
    if max_docs is not None and max_docs < len(texts):
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_docs, replace=False))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return Corpus(texts, labels)


# WordNet 3.0 (Princeton University; WordNet licence, free use with its notice), as shipped in
# Debian's ``wordnet-base`` package, installed by ``setup.sh --test``. Each noun synset becomes one
# short definitional document, "Eiffel Tower: a wrought iron tower 300 meters high that was
# constructed in Paris in 1889; ...", labelled by its lexicographer file (lexnames(5)): places,
# people, languages, foods... World knowledge in plain English, which the Python documentation
# lacks, for SAEs whose features should name countries, cities and languages.
GLOSSARY_TOPICS = ("tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication",
                   "event", "feeling", "food", "group", "location", "motive", "object", "person",
                   "phenomenon", "plant", "possession", "process", "quantity", "relation", "shape",
                   "state", "substance", "time")
_WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")


def _wordnet_entry(line: str) -> tuple[str, str] | None:
    """(topic, document) of one line of WordNet's data.noun (format: wndb(5)), or None for the
    licence header. Fields: offset, lexicographer file number, type, word count (hex), then
    word/lex_id pairs, pointers, and ``| gloss``."""
    if not line or line[0] == " " or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    f = head.split()
    n = int(f[3], 16)
    words = [w.replace("_", " ") for w in f[4:4 + 2 * n:2]]
    words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]      # adjective markers, never on nouns
    name = words[0] + (f" ({', '.join(words[1:3])})" if len(words) > 1 else "")
    gloss = gloss.strip().rstrip(";").strip()
    return GLOSSARY_TOPICS[int(f[1]) - 3], f"{name}: {gloss}{'' if gloss.endswith(('.', '?', '!')) else '.'}"


def glossary_corpus(topics: Sequence[str] = GLOSSARY_TOPICS, max_docs: int | None = None,
                    seed: int = 0) -> Corpus:
    """Definitions of English nouns, one per document, labelled by topic: WordNet 3.0's noun
    glosses from Debian's ``wordnet-base`` package (82,000 synsets, about 1.6M words; ``location``
    has 3,200 places, ``person`` 11,000 people and roles, ``communication`` the languages).

    >>> c = llmri.glossary_corpus(["location"])          # doctest: +SKIP
    >>> [t for t in c.texts if t.startswith("Eiffel")]  # (it is an artifact, not a location)
    []
    """
    if not _WORDNET_NOUNS.is_file():
        raise LlmriError(f"glossary_corpus needs Debian's wordnet-base package ({_WORDNET_NOUNS}): "
                         "apt-get install wordnet-base, or run setup.sh --test")
    unknown = [t for t in topics if t not in GLOSSARY_TOPICS]
    if unknown or not topics:
        raise LlmriError(f"glossary_corpus: unknown topic(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(GLOSSARY_TOPICS)}")
    want = set(topics)
    texts, labels = [], []
    with _WORDNET_NOUNS.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            entry = _wordnet_entry(line)
            if entry is not None and entry[0] in want:
                labels.append(entry[0])
                texts.append(entry[1])
    if max_docs is not None and max_docs < len(texts):
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_docs, replace=False))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return Corpus(texts, labels)

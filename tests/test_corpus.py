"""Corpus readers and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmri
from llmri import Corpus, LlmriError


def test_from_lists_string_and_int_labels():
    c = Corpus(["a b", "c d", "e f"], ["z", "y", "z"])
    assert c.label_names == ["y", "z"] and c.labels.tolist() == [1, 0, 1]
    c2 = Corpus(["a", "b"], [1, 0], ["neg", "pos"])
    assert c2.labels.dtype == np.int64 and c2.label_names == ["neg", "pos"]
    assert Corpus(["only one label"]).label_names == ["all"]  # one label is fine
    assert c.fingerprint == Corpus(["a b", "c d", "e f"], ["z", "y", "z"]).fingerprint
    assert c.fingerprint != Corpus(["a b", "c d", "e g"], ["z", "y", "z"]).fingerprint
    assert c.fingerprint != Corpus(["a b", "c d", "e f"], ["z", "z", "z"]).fingerprint


def test_folder(tmp_path):
    for label, docs in {"pos": ["good film", "great"], "neg": ["bad"]}.items():
        (tmp_path / label).mkdir()
        for i, d in enumerate(docs):
            (tmp_path / label / f"{i}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "neg" / "notes.md").write_text("ignored")
    c = Corpus.from_path(tmp_path)
    assert c.texts == ["bad", "good film", "great"] and c.label_names == ["neg", "pos"]
    assert c.labels.tolist() == [0, 1, 1]


def test_csv_tsv_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",x\nbye,y\n', encoding="utf-8")
    c = Corpus.from_path(tmp_path / "a.csv")
    assert c.texts == ["hello, world", "bye"] and c.label_names == ["x", "y"]
    (tmp_path / "a.tsv").write_text("body\ttopic\nhi\tq\n", encoding="utf-8")
    assert Corpus.from_path(tmp_path / "a.tsv").texts == ["hi"]  # default column names
    (tmp_path / "a.jsonl").write_text(json.dumps({"doc": "x y", "cls": 3}) + "\n\n" +
                                      json.dumps({"doc": "z", "cls": 1}) + "\n", encoding="utf-8")
    c = Corpus.from_path(tmp_path / "a.jsonl", text_column="doc", label_column="cls")
    assert c.texts == ["x y", "z"] and c.label_names == ["1", "3"] and c.labels.tolist() == [1, 0]


def test_dataset_string_and_classlabel():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": ["u", "v", "u"]})
    assert Corpus.from_dataset(ds).labels.tolist() == [0, 1, 0]
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos", "mixed"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [2, 0]}, features=feats)
    c = Corpus.from_dataset(ds)
    assert c.label_names == ["neg", "pos", "mixed"] and c.labels.tolist() == [2, 0]
    with pytest.raises(LlmriError, match=r"no text column 'body'; columns are \['text', 'label'\]"):
        Corpus.from_dataset(ds, text_column="body")


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("content, pattern", [
    ("text,label\n,x\n", r"a\.csv line 2: text is empty"),
    ("text,label\n   ,x\n", r"a\.csv line 2: text is empty"),
    ("text,label\nhi,x\nho,\n", r"a\.csv line 3: label is missing"),
    ("words,label\nhi,x\n", r"no text column found .* columns are \['words', 'label'\]"),
    ("text,label\n", r"a\.csv: the corpus is empty"),
    ("", r"a\.csv: the file is empty"),
])
def test_csv_errors(tmp_path, content, pattern):
    (tmp_path / "a.csv").write_text(content, encoding="utf-8")
    with pytest.raises(LlmriError) as e:
        Corpus.from_path(tmp_path / "a.csv")
    assert __import__("re").search(pattern, one_line(e)), one_line(e)


def test_named_column_missing(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhi,x\n", encoding="utf-8")
    with pytest.raises(LlmriError, match=r"no label column 'topic'; columns are \['text', 'label'\]"):
        Corpus.from_path(tmp_path / "a.csv", label_column="topic")


def test_jsonl_errors(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok", "label": "a"}\n{"text": "bad"\n', encoding="utf-8")
    with pytest.raises(LlmriError, match=r"a\.jsonl line 2: invalid JSON"):
        Corpus.from_path(p)
    p.write_text('{"text": "ok", "label": "a"}\n{"text": null, "label": "a"}\n', encoding="utf-8")
    with pytest.raises(LlmriError, match=r"a\.jsonl line 2: text is missing"):
        Corpus.from_path(p)


def test_path_errors(tmp_path):
    with pytest.raises(LlmriError, match="no such file or folder"):
        Corpus.from_path(tmp_path / "missing")
    with pytest.raises(LlmriError, match="the corpus is empty"):
        Corpus.from_path(tmp_path)
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(LlmriError, match="unsupported file type '.xlsx'"):
        Corpus.from_path(tmp_path / "x.xlsx")
    (tmp_path / "lab").mkdir()
    bad = tmp_path / "lab" / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LlmriError, match=r"latin1\.txt: not UTF-8"):
        Corpus.from_path(tmp_path)
    bad.write_text("  \n", encoding="utf-8")
    with pytest.raises(LlmriError, match=r"latin1\.txt: text is empty"):
        Corpus.from_path(tmp_path)
    (tmp_path / "b.csv").write_bytes(b"text,label\ncaf\xe9,x\n")
    with pytest.raises(LlmriError, match=r"b\.csv: not UTF-8"):
        Corpus.from_path(tmp_path / "b.csv")


def test_list_errors():
    with pytest.raises(LlmriError, match="the corpus is empty"):
        Corpus([])
    with pytest.raises(LlmriError, match="document 1: text is empty"):
        Corpus(["a", ""])
    with pytest.raises(LlmriError, match="2 texts but 1 labels"):
        Corpus(["a", "b"], ["x"])
    with pytest.raises(LlmriError, match="document 1: label is missing"):
        Corpus(["a", "b"], ["x", None])


def test_demo_corpus():
    c = llmri.demo_corpus("topics")
    assert len(c.label_names) >= 3 and min(c.counts()) >= 30

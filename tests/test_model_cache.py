"""A converted model is loaded only under the transformers version that converted it."""

from __future__ import annotations

import hashlib
import json

import transformers

from llmri.model import GGUF_CACHE_FORMAT, _CACHE_INDEX, _cache_entry_valid


def entry(folder, version):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / _CACHE_INDEX).write_text(json.dumps({
        "format": GGUF_CACHE_FORMAT, "transformers": version,
        "files": {"model.safetensors": {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}}))
    return folder


def test_an_entry_converted_by_another_transformers_is_converted_again(tmp_path):
    assert _cache_entry_valid(entry(tmp_path / "same", transformers.__version__))
    assert not _cache_entry_valid(entry(tmp_path / "older", "4.57.0"))
    assert not _cache_entry_valid(entry(tmp_path / "unrecorded", None))

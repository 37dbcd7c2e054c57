"""Writes a fixed set of llmri outputs (Scan bytes, lesion tables, explanation tables) to a folder,
so two versions of the code can be compared file by file.

    PYTHONPATH=OLD/src python3 tools/same_outputs.py /tmp/old-out
    PYTHONPATH=NEW/src python3 tools/same_outputs.py /tmp/new-out
    python3 tools/same_outputs.py --compare /tmp/old-out /tmp/new-out

Used by the redesign (issue 18) to show a change of shape changed no result.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def digest(folder: Path) -> dict[str, str]:
    """sha256 of each output file; in JSON files the output folder and the llmri source folder
    (recorded as paths: a corpus source, a scan) are replaced by placeholders first."""
    roots = json.loads((folder / "roots.json").read_text())
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix not in (".json", ".safetensors", ".csv", ".jsonl") or "calls" in p.parts:
            continue
        if p.name == "roots.json":
            continue
        data = p.read_bytes()
        if p.suffix in (".json", ".jsonl"):
            data = data.replace(roots["out"].encode(), b"<out>").replace(roots["src"].encode(), b"<src>")
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def produce(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    import llmri

    out.mkdir(parents=True, exist_ok=True)
    (out / "roots.json").write_text(json.dumps({"out": str(out.resolve()),
                                                "src": str(Path(llmri.__file__).resolve().parent)}))
    corpus = llmri.demo_corpus()
    enc = llmri.load_model("default")
    llmri.scan(enc, corpus, out / "scan-encoder", sites=("resid", "mlp", "attn"), token_sites=("mlp.-1",), progress=False)
    dec = llmri.load_model("default-decoder")
    small = llmri.Corpus(corpus.texts[:12], corpus.labels[:12])
    llmri.scan(dec, small, out / "scan-decoder", sites=("resid", "mlp"), layers=[0, 5], token_sites=("mlp.5",),
               progress=False)
    llmri.lesion_map(enc, corpus, measure="auto", layers=[0, 1]).to_csv(out / "lesion-encoder.csv", index=False)
    llmri.lesion_map(dec, small, measure="loss", layers=[3], heads=True, mlps=True).to_csv(
        out / "lesion-decoder.csv", index=False)
    ex = llmri.Explainer(llmri.LocalLM(dec), window=8, n_explain=3, n_quantiles=2, per_quantile=1,
                         n_non_activating=1, max_new_tokens=8)
    res = llmri.explain(out / "scan-decoder", "mlp.5", "top:2", explainer=ex, out=out / "explain", page=False,
                        progress=False)
    res.table.to_csv(out / "explain-table.csv", index=False)
    # the same through the CLI
    cli = [sys.executable, "-m", "llmri"]
    data = out / "corpus"
    import shutil

    shutil.copytree(llmri.corpus.demo_corpus_path("topics"), data)
    subprocess.run(cli + ["scan", str(data), "--out", str(out / "cli-scan"), "--layers", "0,3"], check=True)
    subprocess.run(cli + ["ablate", str(data), "--out", str(out / "cli-ablate"), "--layers", "2"], check=True)


def compare(a: Path, b: Path) -> int:
    da, db = digest(a), digest(b)
    bad = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    for k in bad:
        print("differs:", k, "missing" if k not in da or k not in db else "")
    print(f"{len(set(da) & set(db)) - len(bad)} files identical, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    produce(Path(sys.argv[1]))

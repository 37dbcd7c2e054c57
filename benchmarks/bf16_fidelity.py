"""bfloat16 against float32, for scans: what a user would see differ if capture ran in bf16.

Both embedded models, two real labelled corpora (the bundled topic corpus and a seeded sample of
``english_corpus``), scanned in one process with only ``dtype`` changed: float32, ``bfloat16``
(bf16 weights and activations) and ``bf16-mixed`` (float32 weights, bf16 matrix products under
``torch.autocast``: what ``dtype="auto"`` uses where it holds), and ``bf16-store`` (computed in
float32, kept on disk in bfloat16: ``store_dtype="bfloat16"``). Per layer, each against float32:

- pooled activations: relative error ||a - b|| / ||a|| and the smallest per-document cosine;
- token activations (one middle site): relative error and the smallest per-token cosine;
- regions: the share of documents whose 2-d PCA grid cell (10x10) differs;
- NRAG: Jaccard of the edge sets (all categories);
- probes: cross-validated accuracy both ways;
- neurons: overlap of the top-20 selective MLP neurons of each category;
- attention statistics: the largest absolute difference.

Tolerances, set before looking (issue 19): pooled relative error <= 1 %, cosine >= 0.999,
grid cells that differ <= 5 %, NRAG Jaccard >= 0.8, probe accuracy within 0.02, top-20 overlap
>= 15 of 20. A row that misses one is a use where ``dtype="auto"`` must stay float32.

    HF_HUB_OFFLINE=1 python3 benchmarks/bf16_fidelity.py --docs 100 --out runs/bf16-fidelity
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

import llmri

TOL = dict(rel=0.01, cos=0.999, cells=0.05, jaccard=0.8, probe=0.02, overlap=15)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def min_cos(a, b) -> float:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-30)).min())


def edges(g) -> set:
    return {(u, v) for u, v in g.edges}


def compare(s32, s16, token_site: str) -> list[dict]:
    rows = []
    rm32, rm16 = llmri.regions(s32, progress=False), llmri.regions(s16, progress=False)
    p32, p16 = llmri.probe(s32, control=False), llmri.probe(s16, control=False)
    e32, e16 = edges(llmri.nrag(rm32)), edges(llmri.nrag(rm16))
    jac = len(e32 & e16) / max(len(e32 | e16), 1)
    for L in s32.layers("resid"):
        a, b = s32.activations(L), s16.activations(L)
        rows.append(dict(what="resid", layer=L, rel=rel(a, b), min_cos=min_cos(a, b),
                         cells=float((rm32.cells(L) != rm16.cells(L)).any(-1).mean()),
                         probe32=float(p32.set_index("layer").loc[L, "accuracy"]),
                         probe16=float(p16.set_index("layer").loc[L, "accuracy"])))
    rows.append(dict(what="nrag", jaccard=jac, edges32=len(e32), edges16=len(e16)))
    for L in s32.layers("mlp"):
        a, b = s32.activations(L, "mlp"), s16.activations(L, "mlp")
        overlaps = []
        for c in s32.label_names:
            t32 = llmri.neurons(s32, c, layers=[L]).head(20)["neuron"]
            t16 = llmri.neurons(s16, c, layers=[L]).head(20)["neuron"]
            overlaps.append(len(set(t32) & set(t16)))
        rows.append(dict(what="mlp", layer=L, rel=rel(a, b), min_cos=min_cos(a, b), top20_overlap_min=min(overlaps)))
    for L in s32.layers("attn"):
        a, b = s32.activations(L, "attn"), s16.activations(L, "attn")
        rows.append(dict(what="attn_stats", layer=L, max_abs=float(np.abs(a - b).max()), rel=rel(a, b)))
    kind, L = llmri.parse_site(token_site)
    a, b = s32.token_activations(L, kind), s16.token_activations(L, kind)
    rows.append(dict(what=f"tokens {token_site}", rel=rel(a, b), min_cos=min_cos(a, b), n_tokens=len(a)))
    return rows


def verdict(rows) -> list[str]:
    bad = []
    for r in rows:
        if "rel" in r and r["what"] != "attn_stats" and r["rel"] > TOL["rel"]:
            bad.append(f"{r['what']} {r.get('layer', '')}: relative error {r['rel']:.4f}")
        if "min_cos" in r and r["min_cos"] < TOL["cos"]:
            bad.append(f"{r['what']} {r.get('layer', '')}: cosine {r['min_cos']:.5f}")
        if "cells" in r and r["cells"] > TOL["cells"]:
            bad.append(f"resid {r['layer']}: {r['cells']:.1%} of grid cells differ")
        if "jaccard" in r and r["jaccard"] < TOL["jaccard"]:
            bad.append(f"nrag: Jaccard {r['jaccard']:.3f}")
        if "probe32" in r and abs(r["probe32"] - r["probe16"]) > TOL["probe"]:
            bad.append(f"probe {r['layer']}: {r['probe32']:.3f} vs {r['probe16']:.3f}")
        if "top20_overlap_min" in r and r["top20_overlap_min"] < TOL["overlap"]:
            bad.append(f"mlp {r['layer']}: top-20 overlap {r['top20_overlap_min']}")
    return bad


# each side's scan settings; "bf16-store" computes in float32 and keeps bfloat16 on disk (store_dtype)
VARIANTS = {"bfloat16": dict(dtype="bfloat16"), "bf16-mixed": dict(dtype="bf16-mixed"),
            "bf16-store": dict(dtype="float32", store_dtype="bfloat16")}


def summary(rows) -> dict:
    """The worst value of each row kind (the README's table)."""
    def worst(what, key, fn=max):
        vals = [r[key] for r in rows if r["what"].startswith(what) and key in r]
        return fn(vals) if vals else None

    cells = [r["cells"] for r in rows if "cells" in r]
    return dict(resid_rel=worst("resid", "rel"), resid_min_cos=worst("resid", "min_cos", min),
                tokens_rel=worst("tokens", "rel"), tokens_min_cos=worst("tokens", "min_cos", min),
                cells_max=max(cells), cells_mean=float(np.mean(cells)), nrag_jaccard=worst("nrag", "jaccard"),
                probe_diff=max(abs(r["probe32"] - r["probe16"]) for r in rows if "probe32" in r),
                mlp_rel=worst("mlp", "rel"), top20_min=worst("mlp", "top20_overlap_min", min),
                attn_stats_max_abs=worst("attn_stats", "max_abs"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100, help="english_corpus documents")
    ap.add_argument("--out", default="runs/bf16-fidelity")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"sides against float32, of {','.join(VARIANTS)}")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        ap.error(f"unknown variant(s) {', '.join(sorted(set(variants) - set(VARIANTS)))}")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    corpora = {"topics": llmri.demo_corpus("topics"),
               "english": llmri.english_corpus(max_docs=args.docs, seed=0)}
    report = {}
    for model_name, token_site in (("default", "resid.3"), ("default-decoder", "resid.15")):
        for cname, corpus in corpora.items():
            sides = dict(float32=dict(dtype="float32"), **{v: VARIANTS[v] for v in variants})
            scans = {dt: llmri.scan(model_name, corpus, out / f"{model_name}-{cname}-{dt}", **kw,
                                    sites=("resid", "mlp", "attn"), token_sites=(token_site,), progress=False)
                     for dt, kw in sides.items()}
            for dt in variants:
                rows = compare(scans["float32"], scans[dt], token_site)
                key = f"{model_name} / {cname} / {dt}"
                report[key] = dict(rows=rows, misses=verdict(rows), summary=summary(rows))
                print(f"{key}: {report[key]['summary']}; misses: {report[key]['misses'] or 'none'}", flush=True)
    (out / "fidelity.json").write_text(json.dumps(dict(tolerances=TOL, results=report), indent=1))
    print(f"written: {out / 'fidelity.json'}")


if __name__ == "__main__":
    main()

"""Cost and faithfulness of ``llmri.attribute`` on the default decoder with SAEs on 8 layers.

Cost: wall time and peak extra resident memory of ``attribute`` (node pass + batched edge
passes for ``--max-nodes`` features) for a 10-token and a 100-token prompt, as a multiple of one
forward + backward pass of the plain model on the same prompt (the baseline, measured in the
same process: log-probability of the target, backward to the input embeddings).

Faithfulness over 24 prompts (fact completions, the model's own top token as target):
``validate_circuit`` zero-ablates the top-k features (largest attribution) and k random active
features (5 draws), and the 20 features of largest |attribution| one at a time; prints the mean
drops and the Spearman correlation of predicted (attribution) and actual single-feature drops.

    python benchmarks/circuit.py --saes /work/runs/saes-dec/saes [--max-nodes 200] [--prompts 24]
    python benchmarks/circuit.py --saes default-decoder --prompts 20 --no-cost --scores --eiffel   # the shipped set

``--scores`` attributes each faithfulness prompt with ``--max-nodes`` kept features (edges and all)
instead of nodes only, and adds the graph's replacement and completeness scores (Ameisen et al.
2025) to the table. ``--eiffel`` attributes "The Eiffel Tower is in a country whose official
language is" -> " French", prunes it at the default thresholds and lists what pruning keeps at the
landmark's tokens with each feature's top output tokens, to say whether the France chain of the
README is found by pruning rather than by hand.

``--transcoders`` measures the cost with transcoders instead (``mlp_in.L -> mlp_out.L`` at the
layers of the SAEs, as many latents, TopK with k = 32 so that as many features are active per token
as with the SAEs, random weights: cost depends on shapes and sparsity, not on what the features
mean; faithfulness is skipped). Transcoder edges are direct effects from every earlier layer, so
each edge pass runs from the embeddings instead of from the layer below.

    python benchmarks/circuit.py --saes /work/runs/saes-dec/saes --transcoders
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

import llmri
from llmri.circuits import attribute, load_saes, validate_circuit

PROMPTS = [
    "The capital of France is", "The capital of Italy is", "The capital of Spain is", "The capital of Germany is",
    "The capital of Japan is", "The Eiffel Tower is located in the city of", "The Colosseum is in the city of",
    "People in the country whose capital is Paris speak", "The language spoken in the country whose capital is Madrid is",
    "The capital of the country where the Eiffel Tower stands is", "The opposite of hot is",
    "The sun rises in the", "Water freezes at zero degrees", "The first month of the year is",
    "A group of wolves is called a", "The largest planet in the solar system is", "The color of the sky is",
    "Two plus two equals", "The chemical symbol for gold is", "The author of Romeo and Juliet is William",
    "The currency used in the country whose capital is Berlin is the", "Monday, Tuesday,",
    "The day after Friday is", "Cats like to chase",
]
LONG = ("In the middle of the nineteenth century, travellers who crossed Europe by train often stopped in the great "
        "capitals along the way. They admired the museums of Madrid, the bridges of Prague, the canals of Amsterdam "
        "and the cafes of Vienna, and they wrote long letters home about the food, the weather and the people they "
        "met. One of them, a young teacher from a small town, kept a diary of every city she visited. Her favourite "
        "was the city of the Eiffel Tower, which she called the most beautiful place in the world. The capital of "
        "France is")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 10 ms from /proc/self/statm."""

    def __enter__(self):
        self.page = 4096
        self.base = self._rss()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.extra = max(self.peak - self.base, 1)


def fwd_bwd(model, prompt: str, target: int) -> None:
    """The baseline: one forward and one backward pass to the activations (parameters do not
    require gradients, as in every pass ``attribute`` makes)."""
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    emb = model.module.get_input_embeddings()(ids).detach().requires_grad_()
    out = model.module(inputs_embeds=emb)
    torch.log_softmax(out.logits[0, -1].float(), -1)[target].backward()


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` runs and the peak extra memory of the last (10 ms sampling)."""
    best = float("inf")
    for _ in range(repeat):
        with PeakRSS() as mem:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best, mem.extra


def random_transcoder(sae, model, k: int = 32):
    """A TopK transcoder of the SAE's layer (``mlp_in.L -> mlp_out.L``), as wide, random unit weights."""
    from llmri.sae import SAE
    from llmri.sites import parse_site

    L = parse_site(sae.site)[1]
    tc = SAE(sae.d_in, sae.d_sae, arch="topk", k=k, site=f"mlp_in.{L}", target_site=f"mlp_out.{L}",
             model_name=model.name)
    with torch.no_grad():
        tc.W_enc.copy_(torch.nn.functional.normalize(torch.randn(sae.d_in, sae.d_sae), dim=0))
        tc.W_dec.copy_(torch.nn.functional.normalize(torch.randn(sae.d_sae, sae.d_in), dim=1))
    return tc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saes", default="default-decoder", help="SAE folders, or a shipped set by model name")
    ap.add_argument("--max-nodes", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="Prompts for faithfulness (0: cost only).")
    ap.add_argument("--no-cost", action="store_true", help="Skip the cost part.")
    ap.add_argument("--transcoders", action="store_true", help="Cost with random TopK transcoders at the SAE layers.")
    ap.add_argument("--scores", action="store_true", help="Full graphs for the faithfulness prompts, with their scores.")
    ap.add_argument("--eiffel", action="store_true", help="Prune the Eiffel Tower -> French graph; list what it keeps.")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = llmri.load_model("default-decoder", dtype="float32")
    saes = load_saes(args.saes, model)
    if args.transcoders:
        saes = load_saes([random_transcoder(s, model) for s in saes], model)
        args.prompts = 0
    for p in model.module.parameters():
        p.requires_grad_(False)
    print(f"model {model.name}, {'transcoders' if saes[0].is_transcoder else 'SAEs'} at {', '.join(s.site for s in saes)} ({saes[0].d_sae} latents), "
          f"{torch.get_num_threads()} threads")
    tok = model.tokenizer
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    short = "The capital of the country where the Eiffel Tower stands is"
    for name, prompt in () if args.no_cost else (("10-token", " ".join(short.split()[:9]) + " is"), ("100-token", LONG)):
        n = len(tok(prompt)["input_ids"])
        fwd_bwd(model, prompt, paris)  # warm-up
        t0, m0 = timed(lambda: fwd_bwd(model, prompt, paris), repeat=3)
        holder = {}
        t1, m1 = timed(lambda: holder.update(g=attribute(model, saes, prompt, target=" Paris",
                                                           max_feature_nodes=args.max_nodes)))
        g = holder["g"]
        print(f"{name} prompt ({n} tokens): forward+backward {t0:.3f} s, {m0 / 2**20:.0f} MiB; attribute "
              f"{t1:.2f} s ({t1 / t0:.0f}x), {m1 / 2**20:.0f} MiB"
              + (f" ({m1 / m0:.1f}x)" if m0 >= 2**20 else "") + "; "
              f"{g.graph.number_of_nodes()} nodes, {g.graph.number_of_edges()} edges, "
              f"{len(g.features)} active features; scores {g.scores()}")
    if args.eiffel:
        eiffel(model, saes, args.max_nodes)
    if not args.prompts:
        return
    tops, rnds, rhos, pears, scores = {}, {}, [], [], []
    t = time.perf_counter()
    for prompt in PROMPTS[:args.prompts]:
        g = attribute(model, saes, prompt, max_feature_nodes=args.max_nodes if args.scores else 1)
        if args.scores:
            scores.append(g.scores())
        v = validate_circuit(model, saes, g, k=(5, 10, 20), n_random=5, n_single=20, seed=0)
        rhos.append(v["single"]["spearman"])
        pears.append(v["single"]["pearson"])
        for r in v["topk"]:
            tops.setdefault(r["k"], []).append(r["top_drop"])
            rnds.setdefault(r["k"], []).append(r["random_drop_mean"])
        print(f"  {prompt!r} -> {g.target!r}: Spearman {rhos[-1]:.3f}, top-10 drop {v['topk'][1]['top_drop']:.3f} "
              f"vs random {v['topk'][1]['random_drop_mean']:.3f}", flush=True)
    print(f"faithfulness over {len(rhos)} prompts ({time.perf_counter() - t:.0f} s): attribution vs single-feature "
          f"zero ablation Spearman mean {np.nanmean(rhos):.3f} (median {np.nanmedian(rhos):.3f}), Pearson mean "
          f"{np.nanmean(pears):.3f}")
    for k in sorted(tops):
        top, rnd = np.array(tops[k]), np.array(rnds[k])
        print(f"  top-{k}: mean drop of the log-probability {top.mean():.3f} vs random-{k} {rnd.mean():.3f} "
              f"(top beats random on {np.mean(top > rnd):.0%} of prompts)")
    for key in ("replacement_score", "completeness_score", "feature_share") if scores else ():
        v = np.array([sc[key] for sc in scores], dtype=float)
        print(f"  {key}: mean {np.nanmean(v):.3f} (median {np.nanmedian(v):.3f}, range {np.nanmin(v):.3f}-{np.nanmax(v):.3f})")


def eiffel(model, saes, max_nodes: int) -> None:
    """What default pruning keeps of the two-hop Eiffel Tower -> French graph, position by position."""
    from llmri.circuits.influence import FEATURE
    from llmri.sae.features import top_output_tokens

    prompt = "The Eiffel Tower is in a country whose official language is"
    g = attribute(model, saes, prompt, target=" French", max_feature_nodes=max_nodes)
    p = g.prune()
    outs = {s.site: top_output_tokens(s, model, top=4) for s in saes}
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenizer(prompt)["input_ids"])
    feats = [(n, d) for n, d in p.graph.nodes(data=True) if d.get("kind") == FEATURE]
    print(f"Eiffel -> ' French': {g.graph.number_of_nodes()} nodes; pruned (default thresholds) "
          f"{p.graph.number_of_nodes()} nodes, {len(feats)} features; scores {g.scores()}")
    for n, d in sorted(feats, key=lambda nd: (nd[1]["pos"], nd[1]["layer"])):
        print(f"  {n:>12s} pos {d['pos']:2d} {tokens[d['pos']]!r:12s} {d['site']:9s} "
              f"attribution {d['attribution']:+.3f}  outputs: {outs[d['site']][d['feature']]}")


if __name__ == "__main__":
    main()

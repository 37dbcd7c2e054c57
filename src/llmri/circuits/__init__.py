"""Feature circuits: the attribution graph of one answer over per-layer residual-stream SAE features
or per-layer transcoders.

``attribute(model, saes, prompt, target)`` linearises the model around one prompt (attribution
patching: Nanda 2023; Syed et al. 2023) with an SAE spliced in at each chosen ``resid.L`` site,
as in Marks et al. 2024, "Sparse feature circuits" (arXiv:2403.19647):

* At every SAE site the value is rewritten as ``x = decode(f) + err``: feature activations ``f``
  (nodes at (layer, position, feature)) plus the SAE's error term ``err`` (one error node per
  site and position). The rewrite is the identity, so the model computes exactly what it did.
* The metric is the log-probability of the target token at the last position, or the logit
  difference of a pair. Node attribution = d metric / d node x node (for a feature: gradient
  times activation; for an error or a token embedding: the dot product of its vector with the
  gradient). One backward pass gives every node of every layer. For one layer the attributions
  of its features plus its error nodes sum to ``grad . (x - b_dec)``: the first-order change of
  the metric when the layer's features and errors are all removed.
* Edges link the nodes of consecutive SAE layers (and token embeddings to the first one) with
  the same linearisation: ``w(u -> d) = (dm/dd) (dd/du) u`` (Marks et al., eq. 4), where the
  upstream layer's features and errors are cut from everything before them. One backward pass
  per kept downstream node, batched ``batch_size`` at a time; never a forward per feature.
  Error nodes are sources, as in circuit-tracer: they have no incoming edges. Edges into the
  target come from the last SAE layer, weighted by the node attributions.
* Transcoders (``mlp_in.L -> mlp_out.L``, one kind per graph) rewrite the MLP output instead:
  ``mlp_out.L = decode(encode(mlp_in.L)) + err``, ``err`` being the true output minus the
  reconstruction, held fixed; features and one error node per position are the nodes, as for SAEs.
  A transcoder layer does not carry the whole residual stream, so its edges are direct effects as
  in circuit-tracer (Ameisen et al. 2025): each feature, and the target, gets edges from the token
  embeddings and from the features and errors of every earlier transcoder, with every transcoder's
  output cut from its MLP input in that backward pass (paths through an MLP run through its nodes).
* ``freeze=True`` detaches attention patterns and normalisation scales in the backward passes
  (Ameisen et al. 2025, "Circuit tracing", which freezes them so that direct effects are linear).
  By default nothing is frozen: gradients are the model's own (Marks et al.), so attributions are
  the first-order effect of really removing a node, which ``validate_circuit`` checks.

Pruning and the graph scores follow circuit-tracer (Ameisen et al. 2025, "Graph pruning" and the
replacement/completeness scores; ``prune_graph`` / ``compute_graph_scores`` in
github.com/safety-research/circuit-tracer): influence on the target propagated backwards with
each node's incoming |weights| normalised to sum to one. The JSON export writes the nodes/links
format of circuit-tracer's graph viewer (``circuit_tracer/frontend/graph_models.py``).

The package (each module imports only the ones listed after it): ``attribution`` (``attribute``)
and ``validate`` (``ablate_nodes``, ``validate_circuit``); ``graph`` (``AttributionGraph`` and its
``GraphInfo``); ``annotate`` (labels from a Scan, explanations, output tokens) and ``export`` (the
viewer JSON); ``replacement`` (the passes with SAEs spliced in); ``inputs`` (the SAEs, explain runs,
prompt and target, checked); ``influence`` (node kinds and influence).
"""

from __future__ import annotations

from .attribution import attribute
from .graph import AttributionGraph, GraphInfo
from .influence import EMBEDDING, ERROR, FEATURE, LOGIT
from .inputs import feature_explanations, load_saes
from .replacement import frozen
from .validate import ablate_nodes, validate_circuit

__all__ = ["EMBEDDING", "ERROR", "FEATURE", "LOGIT", "AttributionGraph", "GraphInfo", "ablate_nodes", "attribute",
           "feature_explanations", "frozen", "load_saes", "validate_circuit"]

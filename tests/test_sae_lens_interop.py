"""SAELens reads llmri's SAE folders and llmri reads SAELens' (``sae-lens`` in the test extra)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from llmri.sae import SAE

sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_round_trip_through_sae_lens(tmp_path, arch):
    rng = np.random.default_rng(0)
    ours = SAE(16, 40, arch=arch, k=4 if "topk" in arch else None, site="resid.3")
    with torch.no_grad():
        for p in (ours.W_enc, ours.b_enc, ours.W_dec, ours.b_dec):
            p.copy_(torch.from_numpy(rng.normal(size=p.shape).astype(np.float32)) * 0.3)
        ours.threshold.fill_(0.2)
    ours.save(tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    x = torch.from_numpy(rng.normal(size=(7, 16)).astype(np.float32))
    with torch.no_grad():
        f = ours.encode(x)
        assert (f > 0).any() and (f == 0).any()
        torch.testing.assert_close(theirs.encode(x), f)
        torch.testing.assert_close(theirs.decode(f), ours.decode(f))
        theirs.save_model(str(tmp_path / "theirs"))
        back = SAE.load(tmp_path / "theirs")
        torch.testing.assert_close(back.encode(x), f)
    assert SAE.load(tmp_path / "ours").site == "resid.3"


def _randomise(sae, rng, scale=0.3):
    """Random weights (decoder rows of uneven norms, so rescaling by them matters)."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)) * scale)
        sae.W_dec.mul_(torch.from_numpy(rng.uniform(0.2, 3.0, size=(sae.W_dec.shape[0], 1)).astype(np.float32)))
    return sae


def test_a_rescaled_topk_sae_of_sae_lens_encodes_identically(tmp_path):
    """rescale_acts_by_decoder_norm=True: SAELens ranks pre * |W_dec_i| and decodes f / |W_dec_i|;
    llmri folds the norms into the weights, so the active set and every value agree."""
    rng = np.random.default_rng(1)
    cfg = sae_lens.TopKSAEConfig(d_in=16, d_sae=48, k=5, rescale_acts_by_decoder_norm=True,
                                 metadata=sae_lens.saes.sae.SAEMetadata(hook_name="blocks.2.hook_resid_post",
                                                                         model_name="tiny"))
    theirs = _randomise(sae_lens.TopKSAE(cfg), rng)
    theirs.save_model(str(tmp_path / "rescaled"))
    ours = SAE.load(tmp_path / "rescaled")
    x = torch.from_numpy(rng.normal(size=(300, 16)).astype(np.float32))
    with torch.no_grad():
        want, got = theirs.encode(x), ours.encode(x)
        assert ((want != 0) == (got != 0)).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(got), theirs.decode(want), rtol=1e-5, atol=1e-5)
        # without the fold the active set differs (the flag matters on these weights)
        plain = (x - theirs.b_dec) @ theirs.W_enc + theirs.b_enc
        assert (plain.topk(5, -1).indices.sort(-1).values != want.topk(5, -1).indices.sort(-1).values).any()
    assert ours.site == "resid.3" and ours.model_name == "tiny"


def _saelens_folder(tmp_path, name, sae):
    sae.save_model(str(tmp_path / name))
    return tmp_path / name


def _edit(folder, **changes):
    import json

    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if key.startswith("metadata."):
            cfg["metadata"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("make, change, flag", [
    (lambda: sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=8, d_sae=16)), {}, "architecture 'gated'"),
    (lambda: sae_lens.AbsTopKSAE(sae_lens.AbsTopKSAEConfig(d_in=8, d_sae=16, k=2)), {}, "architecture 'abstopk'"),
    (lambda: sae_lens.SkipTranscoder(sae_lens.SkipTranscoderConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False)), {},
     "architecture 'skip_transcoder'"),
    (lambda: sae_lens.JumpReLUSkipTranscoder(sae_lens.JumpReLUSkipTranscoderConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False)), {},
     "architecture 'jumprelu_skip_transcoder'"),
    (lambda: sae_lens.MatchingPursuitSAE(sae_lens.MatchingPursuitSAEConfig(d_in=8, d_sae=16)), {},
     "architecture 'matching_pursuit'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16, normalize_activations="layer_norm")),
     {}, "normalize_activations 'layer_norm'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16,
                                                             normalize_activations="constant_norm_rescale")),
     {}, "normalize_activations 'constant_norm_rescale'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16,
                                                             normalize_activations="expected_average_only_in")),
     {}, "normalize_activations 'expected_average_only_in'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16)),
     {"normalize_activations": "covariance_whitening"}, "normalize_activations 'covariance_whitening'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16)),
     {"metadata.hook_head_index": 3}, "hook_head_index 3"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16)),
     {"reshape_activations": "hook_z", "metadata.hook_name": "blocks.1.hook_resid_pre"}, "reshape_activations 'hook_z'"),
    (lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16)),
     {"metadata.sae_lens_version": "5.9.0", "finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
])
def test_every_flag_llmri_cannot_compute_is_refused_by_name(tmp_path, make, change, flag):
    from llmri import LlmriError

    folder = _edit(_saelens_folder(tmp_path, "sae", make()), **change)
    with pytest.raises(LlmriError, match=re.escape(flag)) as e:
        SAE.load(folder)
    assert str(folder / "cfg.json") in str(e.value) and "\n" not in str(e.value)


def test_flags_llmri_reads_as_sae_lens_does(tmp_path):
    """hook_z on an attention-output hook, JumpReLU thresholds below 0, a pre-6.0 TopK config, and
    SAELens' transcoders: each encodes and decodes as SAELens itself reads the folder."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    meta = sae_lens.saes.sae.SAEMetadata
    cases = {
        "hook_z": sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=16,
                                                                  metadata=meta(hook_name="blocks.1.attn.hook_z"))),
        "jumprelu": sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=8, d_sae=16)),
        "transcoder": sae_lens.Transcoder(sae_lens.TranscoderConfig(
            d_in=8, d_sae=16, d_out=6, apply_b_dec_to_input=False, metadata=meta(hook_name="blocks.0.ln2.hook_normalized",
                                                     hook_name_out="blocks.0.hook_mlp_out"))),
        "jumprelu_transcoder": sae_lens.JumpReLUTranscoder(sae_lens.JumpReLUTranscoderConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False)),
        "topk_pre6": sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=16, k=3)),
    }
    for name, theirs in cases.items():
        _randomise(theirs, rng)
        if hasattr(theirs, "threshold"):
            with torch.no_grad():
                theirs.threshold.copy_(torch.linspace(-0.5, 0.5, 16))  # some below 0: SAELens' ReLU matters
        folder = _saelens_folder(tmp_path, name, theirs)
        if name == "topk_pre6":  # SAELens < 6: a standard SAE with a topk activation_fn
            _edit(folder, architecture="standard", activation_fn="topk", activation_fn_kwargs={"k": 3},
                  k=None, **{"metadata.sae_lens_version": None})
        if name == "hook_z":
            _edit(folder, reshape_activations="hook_z")
        theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")  # the folder as SAELens reads it
        ours = SAE.load(folder)
        with torch.no_grad():
            want = theirs.encode(x) if name != "hook_z" else theirs.encode(x.view(50, 2, 4))
            got = ours.encode(x)
            torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-6, msg=name)
            back = theirs.decode(want)
            torch.testing.assert_close(ours.decode(got), back.reshape(50, -1), rtol=1e-5, atol=1e-6, msg=name)
    assert SAE.load(tmp_path / "hook_z").site == "attn_z.1"
    tc = SAE.load(tmp_path / "transcoder")
    assert (tc.site, tc.target_site, tc.is_transcoder) == ("mlp_in.0", "mlp_out.0", True)


def test_metadata_survives_sae_lens_load_and_llmri_transcoders_load_there(tmp_path):
    rng = np.random.default_rng(3)
    ours = SAE(16, 40, arch="topk", k=4, site="resid.3", model_name="tiny-llama")
    _randomise(ours, rng)
    ours.save(tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    assert theirs.cfg.metadata.model_name == "tiny-llama"
    theirs.save_model(str(tmp_path / "theirs"))
    back = SAE.load(tmp_path / "theirs")
    assert (back.site, back.model_name) == ("resid.3", "tiny-llama")
    for arch, cls in (("relu", sae_lens.Transcoder), ("jumprelu", sae_lens.JumpReLUTranscoder)):
        tc = _randomise(SAE(16, 40, arch=arch, k=None, site="mlp_in.2", target_site="mlp_out.2", d_out=12), rng)
        with torch.no_grad():
            tc.threshold.fill_(0.1)
        tc.save(tmp_path / arch)
        loaded = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
        assert type(loaded) is cls and loaded.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"
        x = torch.from_numpy(rng.normal(size=(20, 16)).astype(np.float32))
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode(x), tc.encode(x))
            torch.testing.assert_close(loaded.decode(tc.encode(x)), tc.decode(tc.encode(x)))


def test_site_names_and_transformer_lens_hook_names_map_both_ways():
    """Each hook name llmri writes is a hook of a real TransformerLens model, and maps back."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from llmri.sae.model import hook_name_of_site, site_from_hook_name

    tl = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=11,
                                                   act_fn="gelu", normalization_type="LN"))
    for site in ("resid.0", "resid.1", "mlp.1", "mlp_in.0", "mlp_out.1", "attn_out.0", "attn_z.1", "attn.0"):
        hook = hook_name_of_site(site)
        assert hook in tl.hook_dict and site_from_hook_name(hook) == site
    assert site_from_hook_name("blocks.1.hook_resid_post") == "resid.2"
    assert site_from_hook_name("blocks.1.hook_mlp_in") == "blocks.1.hook_mlp_in"  # before ln2: no llmri site
    assert hook_name_of_site("resid.x") == "resid.x"


def _hub_cache(cache, repo, files: dict, commit="a" * 40):
    """``files`` ({path in repo: bytes}) laid out as the hub client keeps them: content-addressed
    blobs, a snapshot of symlinks to them, and refs/main naming the snapshot."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = root / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def test_from_pretrained_reads_a_release_from_the_local_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from llmri import LlmriError

    rng = np.random.default_rng(4)
    sid = "blocks.8.hook_resid_pre"  # gpt2-small-res-jb's SAEs live in jbloom/GPT2-Small-SAEs-Reformatted/<sid>/
    theirs = _randomise(sae_lens.StandardSAE(sae_lens.StandardSAEConfig(
        d_in=16, d_sae=40, metadata=sae_lens.saes.sae.SAEMetadata(hook_name=sid, model_name="gpt2-small"))), rng)
    theirs.save_model(str(tmp_path / "made"))
    files = {f"{sid}/{n}": (tmp_path / "made" / n).read_bytes() for n in ("cfg.json", "sae_weights.safetensors")}
    cache = tmp_path / "hub"
    _hub_cache(cache, "jbloom/GPT2-Small-SAEs-Reformatted", files)
    _hub_cache(cache, "someone/saes", {"layer3/cfg.json": files[f"{sid}/cfg.json"]})
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    ours = SAE.from_pretrained("gpt2-small-res-jb", sid)
    ref = sae_lens.SAE.from_pretrained("gpt2-small-res-jb", sid)  # SAELens' own, offline, from the same cache
    x = torch.from_numpy(rng.normal(size=(30, 16)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ref.encode(x))
        torch.testing.assert_close(ours.decode(ours.encode(x)), ref.decode(ref.encode(x)))
    assert ours.site == "resid.8" and ours.model_name == "gpt2-small"
    assert str(ours.folder).startswith(str(cache / "models--jbloom--GPT2-Small-SAEs-Reformatted" / "snapshots"))
    with pytest.raises(LlmriError, match=r"blocks.9.hook_resid_pre/cfg.json of jbloom/GPT2-Small-SAEs-Reformatted "
                                         r"is not in the local Hugging Face cache"):
        SAE.from_pretrained("gpt2-small-res-jb", "blocks.9.hook_resid_pre")
    with pytest.raises(LlmriError, match="layer3/sae_weights.safetensors of someone/saes is not in the local"):
        SAE.from_pretrained("someone/saes", "layer3")
    with pytest.raises(LlmriError, match="stored in the 'gemma_2' layout"):
        SAE.from_pretrained("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6")
    with pytest.raises(LlmriError, match="has no SAE 'blocks.99.hook_resid_pre'"):
        SAE.from_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(LlmriError, match="'no-such-release' is not in SAELens' registry"):
        SAE.from_pretrained("no-such-release", "x")

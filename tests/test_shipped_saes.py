"""Feature sets shipped with llmri, by model name: ``llmri.load_saes(name)`` finds the set, checks
every file against the SHA-256 of its ``index.json`` (computed here with hashlib, apart from the
loader), and returns ``{site: SAE}``; half-precision weights load as their float16 rounding.
A set built in a temporary folder stands in for the shipped one."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import llmri
from llmri.sae import SAE
from llmri.sae import collection


def random_sae(site: str, seed: int) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(16, 48, arch="batchtopk", k=4, site=site)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.normal_()
        sae.threshold.fill_(0.3)
    return sae


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    root = tmp_path / "features"
    folder = root / "tiny-model"
    saes = {s: random_sae(s, i) for i, s in enumerate(["resid.1", "resid.3"])}
    for site, sae in saes.items():
        sae.save(folder / site, weights_dtype="float16")
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / "index.json").write_text(json.dumps({"files": files}))
    monkeypatch.setattr(collection, "SHIPPED_ROOT", root)
    return folder, saes


def test_a_shipped_set_loads_by_name_as_sites_to_saes(shipped):
    folder, made = shipped
    got = llmri.load_saes("tiny-model")
    assert sorted(got) == ["resid.1", "resid.3"]
    x = torch.randn(32, 16)
    for site, sae in got.items():
        assert sae.W_enc.dtype == torch.float32
        ref = made[site]
        np.testing.assert_array_equal(sae.W_dec.detach().numpy(), ref.W_dec.detach().half().float().numpy())
        rounded = SAE(16, 48, arch="batchtopk", k=4, site=site)
        with torch.no_grad():
            for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
                getattr(rounded, n).copy_(getattr(ref, n).half().float())
        torch.testing.assert_close(sae.encode(x), rounded.encode(x), rtol=0, atol=0)
    assert collection.shipped_sets() == ["tiny-model"]
    assert (folder / "resid.1" / "sae_weights.safetensors").stat().st_size < 16 * 48 * 2 * 2 + 2000


def test_a_damaged_or_missing_file_is_refused_in_one_line(shipped):
    folder, _ = shipped
    w = folder / "resid.3" / "sae_weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(llmri.LlmriError, match=r"damaged .*resid.3/sae_weights.safetensors differs") as e:
        llmri.load_saes("tiny-model")
    assert "\n" not in str(e.value)
    w.unlink()
    with pytest.raises(llmri.LlmriError, match="is missing"):
        llmri.load_saes("tiny-model")


def test_a_model_with_no_shipped_set_and_no_folder_is_one_line(shipped, tmp_path):
    with pytest.raises(llmri.LlmriError, match=r"no feature set ships for 'gpt-7'.*shipped sets: tiny-model"):
        llmri.load_saes("gpt-7")
    with pytest.raises(llmri.LlmriError, match="no such folder"):
        llmri.load_saes(str(tmp_path / "missing"))


def test_float16_weights_that_do_not_fit_are_refused(tmp_path):
    sae = random_sae("resid.1", 0)
    with torch.no_grad():
        sae.W_enc[0, 0] = 1e6
    with pytest.raises(llmri.LlmriError, match="does not fit in float16"):
        sae.save(tmp_path / "s", weights_dtype="float16")
    assert not (tmp_path / "s").exists()
    with pytest.raises(llmri.LlmriError, match="weights_dtype 'int8'"):
        sae.save(tmp_path / "s", weights_dtype="int8")


def test_one_sae_of_a_shipped_set_is_named_model_slash_site(shipped, tmp_path, monkeypatch):
    folder, made = shipped
    assert collection.sae_folder("tiny-model/resid.3") == folder / "resid.3"
    assert collection.is_shipped(folder / "resid.3") and not collection.is_shipped(tmp_path)
    assert collection.load_sae("tiny-model/resid.3").site == "resid.3"
    assert collection.sae_folders_of(["tiny-model"]) == [folder / "resid.1", folder / "resid.3"]
    with pytest.raises(llmri.LlmriError, match=r"--sae tiny-model: a feature set, not one SAE; name one as "
                                               r"tiny-model/SITE \(sites: resid.1, resid.3\)"):
        collection.sae_folder("tiny-model", "--sae")
    with pytest.raises(llmri.LlmriError, match=r"has no SAE at 'resid.2' \(it has resid.1, resid.3\)"):
        collection.load_sae("tiny-model/resid.2")
    # a folder of the user's with the same relative name wins over the shipped set
    mine = tmp_path / "tiny-model" / "resid.3"
    made["resid.1"].save(mine)
    monkeypatch.chdir(tmp_path)
    assert collection.load_sae("tiny-model/resid.3").site == "resid.1"
    assert not collection.is_shipped(collection.sae_folder("tiny-model/resid.3"))


# ---------------------------------------------------------------- the set that ships for default-decoder

SHIPPED = collection.SHIPPED_ROOT / "default-decoder"


def _sample_corpus(card: dict) -> tuple[list[str], list[str]]:
    """The held-out documents the set's card names for re-measuring, English first."""
    parts = {"english": llmri.english_corpus(), "glossary": llmri.glossary_corpus()}
    rows = [(parts[name].texts[i], name) for name in ("english", "glossary")
            for i in card["evaluation"]["sample_docs"][name]]
    return [t for t, _ in rows], [lab for _, lab in rows]


def _explained_variance_by_hand(sae: SAE, module, tokenizer, texts: list[str], layer: int) -> float:
    """Explained variance of ``sae`` at resid.``layer`` from a plain transformers forward
    (``output_hidden_states``, one text at a time, no padding, no llmri hooks), every text's first
    token left out as training leaves it out: 1 - SSE / total sum of squares about the mean."""
    xs = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            xs.append(module(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, 1:].float())
        x = torch.cat(xs).double()
        x_hat = sae.decode(sae.encode(x.float())).double()
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_the_default_decoder_set_ships_loads_offline_and_holds_its_readme_figures():
    assert "default-decoder" in collection.shipped_sets(), f"{SHIPPED}: the shipped feature set is missing"
    card = json.loads((SHIPPED / "set.json").read_text())
    index = json.loads((SHIPPED / "index.json").read_text())["files"]
    on_disk = {p.relative_to(SHIPPED).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(SHIPPED.rglob("*")) if p.is_file() and p.name != "index.json"}
    assert on_disk == index
    size = sum((SHIPPED / f).stat().st_size for f in index)
    assert size < 40e6, f"the shipped weights take {size / 1e6:.1f} MB, over the 40 MB budget"

    saes = llmri.load_saes("default-decoder")
    assert sorted(saes, key=lambda s: int(s.split(".")[1])) == card["sites"]
    model = llmri.load_model("default-decoder")
    texts, _ = _sample_corpus(card)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for site, sae in saes.items():
        assert (sae.site, sae.d_in, sae.d_sae, sae.arch) == (site, 576, card["n_latents"], card["arch"])
        figure = card["evaluation"]["sites"][site]["sample"]["explained_variance"]
        # the README states the figure the tests re-measure
        assert re.search(rf"\| `{re.escape(site)}` \|[^\n]*\| {figure:.3f} \|", readme), (site, figure)
        got = _explained_variance_by_hand(sae, model.module, model.tokenizer, texts, int(site.split(".")[1]))
        assert abs(got - figure) <= 0.02, (site, got, figure)
        held = card["evaluation"]["sites"][site]["held_out"]
        for gate in card["gates"]:   # the card's own figures meet the gates it states
            value = held[gate["metric"]]
            assert value >= gate["bound"] if gate["kind"] == "min" else value <= gate["bound"], (site, gate, value)


def test_commands_take_a_shipped_sae_as_model_slash_site_and_write_nothing_into_it(tmp_path):
    from test_cli import assert_one_line_error, run

    before = collection.file_hashes(SHIPPED)
    assert_one_line_error(run("sae", "steer", "default-decoder/resid.16", "Hello", "--model", "default-decoder",
                              "--feature", "99999", cwd=tmp_path), "out of range")
    assert_one_line_error(run("sae", "steer", "default-decoder", "Hello", "--model", "default-decoder",
                              "--feature", "1", cwd=tmp_path), "a feature set, not one SAE")
    assert_one_line_error(run("sae", "eval", "default-decoder/resid.99", "--model", "default-decoder",
                              "--corpus", "c.csv", cwd=tmp_path), "has no SAE at 'resid.99'")
    texts = llmri.english_corpus().texts[:6]
    (tmp_path / "c.csv").write_text("text,label\n" + "".join('"' + t.replace('"', '""') + '",docs\n' for t in texts))
    proc = run("sae", "eval", "default-decoder/resid.8", "--model", "default-decoder", "--corpus", "c.csv",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ev = float(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("explained_variance")))
    sae = llmri.load_sae("default-decoder/resid.8")
    model = llmri.load_model("default-decoder")
    assert abs(ev - _explained_variance_by_hand(sae, model.module, model.tokenizer, texts, 8)) <= 0.02
    assert "eval.json not written" in proc.stderr
    assert collection.file_hashes(SHIPPED) == before

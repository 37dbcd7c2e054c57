"""SAELens reads llmri's SAE folders and llmri reads SAELens' (``sae-lens`` in the test extra)."""

from __future__ import annotations

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
    # SAELens re-saves only its own metadata: the site must then be set again (sae.site = ...)
    assert SAE.load(tmp_path / "ours").site == "resid.3"

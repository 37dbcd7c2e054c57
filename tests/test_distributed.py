"""Capture and lesion maps on a local Ray cluster write exactly what the local path writes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import llmri
import llmri.cli
from conftest import LABELS, TEXTS, make_model

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent
SRC = Path(llmri.__file__).resolve().parents[1]
# Several shards (4 on this corpus), every site kind, token-level records.
SCAN = dict(sites=("resid", "mlp", "attn"), token_sites=("resid.2",), batch_tokens=32, shard_tokens=20)


@pytest.fixture(scope="module")
def cluster():
    """One local two-CPU cluster for the module; its workers import this llmri and these tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    m = make_model("llama")
    m.module.save_pretrained(d)
    m.tokenizer.save_pretrained(d)
    return d


@contextlib.contextmanager
def one_thread():
    """Each Ray worker runs torch on one thread (its one CPU); CPU float sums can differ between
    thread counts, so the local reference runs on one thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def local_scan(model_dir, out):
    with one_thread():
        return llmri.scan(str(model_dir), llmri.Corpus(TEXTS, LABELS), out, **SCAN)


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


class FailOnce:
    """Loads the model; the second forward pass in any worker fails once (the first worker to get
    there makes ``flag`` and then raises, or exits like a killed process)."""

    def __init__(self, folder, flag, exit: bool):
        self.folder, self.flag, self.exit = str(folder), str(flag), exit

    def __call__(self):
        model = llmri.load_model(self.folder)
        forward, calls = model.base.forward, []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2 and not os.path.exists(self.flag):
                Path(self.flag).touch()
                if self.exit:
                    os._exit(1)
                raise RuntimeError("injected failure")
            return forward(*args, **kwargs)

        model.base.forward = flaky
        return model


def ray_cluster_running() -> bool:
    """Whether a Ray cluster runs on this machine (Ray's ``auto`` finds one by its GCS process)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"gcs_server" in cmdline.read_bytes():
                return True
    return False


# First in the module: the module's own cluster starts with the first test that needs it.
def test_ray_auto_without_a_cluster_says_how_to_start_one(tmp_path):
    if ray_cluster_running():
        pytest.skip("a Ray cluster is running on this machine: --ray auto would join it")
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\na star,x\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp_path / "ray-tmp"), PYTHONPATH=str(SRC))  # no cluster recorded there
    out = subprocess.run([sys.executable, "-m", "llmri", "scan", str(csv), "--out", str(tmp_path / "out"),
                          "--ray", "auto"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "llmri: error: --ray auto: no Ray cluster is running on this machine; start one with `ray start --head` "
        "(and `ray start --address=HEAD:6379` on the other machines), or use --ray local"]
    assert not (tmp_path / "out").exists()


def test_scan_on_ray_is_byte_identical_to_a_local_scan(cluster, model_dir, tmp_path):
    ref = local_scan(model_dir, tmp_path / "local")
    assert ref.manifest["plan"]["n_shards"] == 4
    dist = llmri.scan(str(model_dir), llmri.Corpus(TEXTS, LABELS), tmp_path / "ray", engine="ray", workers=2, **SCAN)
    assert files(tmp_path / "ray") == files(tmp_path / "local")
    assert dist.activations(2, "mlp").shape == (len(TEXTS), 64)


def test_a_killed_worker_is_restarted_and_the_scan_ends_identical(cluster, model_dir, tmp_path):
    flag = tmp_path / "killed"
    llmri.scan(FailOnce(model_dir, flag, exit=True), llmri.Corpus(TEXTS, LABELS), tmp_path / "ray",
               engine=llmri.Engine("ray", workers=2, retries=1), **SCAN)
    assert flag.exists()  # a worker did die mid-run
    local_scan(model_dir, tmp_path / "local")
    assert files(tmp_path / "ray") == files(tmp_path / "local")


def test_a_failed_shard_leaves_an_incomplete_scan_that_a_rerun_finishes(cluster, model_dir, tmp_path):
    corpus = llmri.Corpus(TEXTS, LABELS)
    with pytest.raises(llmri.LlmriError, match=r"1 shard\(s\) failed .*injected failure.*3/4 shards .*rerun"):
        llmri.scan(FailOnce(model_dir, tmp_path / "flag", exit=False), corpus, tmp_path / "ray",
                   engine=llmri.Engine("ray", workers=2, retries=0), **SCAN)
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["complete"] is False
    with pytest.raises(llmri.LlmriError, match="incomplete"):
        llmri.Scan.open(tmp_path / "ray")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("shard-*")}
    assert len(before) == 3
    llmri.scan(str(model_dir), corpus, tmp_path / "ray", engine=llmri.Engine("ray", workers=2), **SCAN)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("shard-*")}
    assert {k: after[k] for k in before} == before  # finished shards were not captured again
    local_scan(model_dir, tmp_path / "local")
    assert files(tmp_path / "ray") == files(tmp_path / "local")


def run_local_and_on_ray(args, tmp_path):
    """The command into tmp_path/local (one torch thread) and into tmp_path/ray on two workers;
    the second run's result."""
    with one_thread():
        r = CliRunner().invoke(llmri.cli.cli, args + ["--out", str(tmp_path / "local")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(llmri.cli.cli, args + ["--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_scan_command_on_ray_writes_the_local_scan(cluster, model_dir, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(TEXTS, LABELS)))
    args = ["scan", str(csv), "--model", str(model_dir), "--sites", "resid,attn_out", "--token-sites", "mlp.1",
            "--batch-tokens", "32", "--shard-tokens", "30"]
    r = run_local_and_on_ray(args, tmp_path)
    assert "10 documents" in r.output
    assert llmri.Scan.open(tmp_path / "ray").manifest["plan"]["n_shards"] >= 2
    assert files(tmp_path / "ray") == files(tmp_path / "local")


def test_lesion_map_on_ray_equals_the_local_one(cluster, model_dir):
    corpus = llmri.Corpus(TEXTS, LABELS)
    with one_thread():
        ref = llmri.lesion_map(llmri.load_model(str(model_dir)), corpus, measure="loss")
    df = llmri.lesion_map(str(model_dir), corpus, measure="loss", engine="ray", workers=2)
    assert len(df) == 3 * 4 + 3
    assert df.equals(ref) and df.attrs == ref.attrs
    assert df["effect"].abs().max() > 0


# ---------------------------------------------------------------- explanations
@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """The tiny chat model of the explain tests, saved so that each Ray worker loads its own copy."""
    from test_explain_local import tiny_chat_model

    d = tmp_path_factory.mktemp("tiny-chat")
    m = tiny_chat_model()
    m.module.save_pretrained(d)
    m.tokenizer.save_pretrained(d)
    return d


def token_scan(model_dir, out):
    with one_thread():
        return llmri.scan(str(model_dir), llmri.Corpus(TEXTS * 3, LABELS * 3), out, sites=("resid",), layers=[1],
                          token_sites=("mlp.1",), progress=False)


def explain_run(chat_dir, scan, out, **kw):
    from llmri.explain import LocalLM

    ex = llmri.Explainer(LocalLM(str(chat_dir)), window=6, n_explain=3, n_quantiles=2, per_quantile=2,
                         n_non_activating=2, max_new_tokens=4)
    return ex, llmri.explain(scan, "mlp.1", "top:4", explainer=ex, out=out, progress=False, **kw)


def cache_files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "calls").rglob("*.json"))}


def test_explanations_on_ray_equal_the_local_ones_and_reuse_the_cache(cluster, model_dir, chat_dir, tmp_path):
    import pandas as pd

    scan = token_scan(model_dir, tmp_path / "scan")
    with one_thread():
        _, ref = explain_run(chat_dir, scan, tmp_path / "local")
    ex, res = explain_run(chat_dir, scan, tmp_path / "ray", engine="ray", workers=2)
    assert ex.backend._model is None             # the calls ran on the workers: the driver never loaded the model
    assert len(res.table) == 4 and res.table["simulation_baseline"].notna().all()
    pd.testing.assert_frame_equal(res.table, ref.table)
    assert res.records == ref.records
    st, st_ref = res.info["stats"], ref.info["stats"]
    assert st["calls"] > 0 and st["calls"] + st["cache_hits"] == st_ref["calls"] + st_ref["cache_hits"]
    assert st["prompt_tokens"] == st_ref["prompt_tokens"]
    assert res.info["model"] == ref.info["model"] and res.info["engine"] == {"engine": "ray", "workers": 2}
    # the workers wrote the same cache entries (same keys, same answers) as the local run
    assert cache_files(tmp_path / "ray") == cache_files(tmp_path / "local")
    assert (tmp_path / "ray" / "explain.html").is_file()
    # a rerun on Ray pays for nothing: every call comes from the cache, no entry is rewritten
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "calls").rglob("*.json")}
    _, again = explain_run(chat_dir, scan, tmp_path / "ray", engine="ray", workers=2)
    assert again.info["stats"]["calls"] == 0
    assert again.info["stats"]["cache_hits"] == st["calls"] + st["cache_hits"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "calls").rglob("*.json")} == before
    pd.testing.assert_frame_equal(again.table, ref.table)
    # and the local path reads the cache the workers wrote
    ex2, local_again = explain_run(chat_dir, scan, tmp_path / "ray")
    assert local_again.info["stats"]["calls"] == 0


def test_explain_command_on_ray_writes_the_local_table(cluster, model_dir, chat_dir, tmp_path):
    token_scan(model_dir, tmp_path / "scan")
    args = ["explain", str(tmp_path / "scan"), "--site", "mlp.1", "--neurons", "top:3", "--model-name", str(chat_dir),
            "--scorers", "simulation,detection"]
    r = run_local_and_on_ray(args, tmp_path)
    local, dist = (tmp_path / "local" / "explanations.csv").read_text(), (tmp_path / "ray" / "explanations.csv").read_text()
    assert dist == local and len(local.splitlines()) == 4
    assert cache_files(tmp_path / "ray") == cache_files(tmp_path / "local")


def test_explain_on_ray_errors_are_one_line(cluster, model_dir, tmp_path):
    from llmri.explain import LocalLM, OpenAICompatible

    scan = token_scan(model_dir, tmp_path / "scan")
    # an unreachable server: the worker's one-line error comes back as itself; nothing is written
    be = OpenAICompatible("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=5)
    with pytest.raises(llmri.LlmriError, match=r"^http://127.0.0.1:9/v1: cannot connect to the server$"):
        llmri.explain(scan, "mlp.1", [0, 1], llmri.Explainer(be), scorers=("simulation",), out=tmp_path / "out",
                      engine="ray", workers=2, progress=False)
    assert not (tmp_path / "out" / "explanations.csv").exists()
    with pytest.raises(llmri.LlmriError, match="on Ray give LocalLM the model's name or folder"):
        llmri.explain(scan, "mlp.1", [0], llmri.Explainer(LocalLM(make_model("llama"))), engine="ray")
    with pytest.raises(llmri.LlmriError, match="workers and resources apply to engine='ray'"):
        llmri.explain(scan, "mlp.1", [0], llmri.Explainer(be), workers=2)
    r = CliRunner().invoke(llmri.cli.cli, ["explain", str(tmp_path / "scan"), "--site", "mlp.1", "--neurons", "0",
                                           "--out", str(tmp_path / "o"), "--workers", "2"])
    assert r.exit_code != 0 and "--workers and --gpus-per-worker need --ray" in (r.output + str(r.exception))
    assert not (tmp_path / "o").exists()


def test_nothing_imports_ray_without_the_ray_engine(tmp_path):
    code = f"""
import sys
sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]
import llmri
from conftest import LABELS, TEXTS, make_model
from click.testing import CliRunner
from llmri.cli import cli
m = make_model("gpt2")
llmri.scan(m, llmri.Corpus(TEXTS, LABELS), {str(tmp_path / 'a')!r})
llmri.lesion_map(m, llmri.Corpus(TEXTS, LABELS), layers=[0])
m.module.save_pretrained({str(tmp_path / 'm')!r}); m.tokenizer.save_pretrained({str(tmp_path / 'm')!r})
open({str(tmp_path / 'c.csv')!r}, "w").write("text,label\\n" + "".join(f"{{t}},{{l}}\\n" for t, l in zip(TEXTS, LABELS)))
r = CliRunner().invoke(cli, ["scan", {str(tmp_path / 'c.csv')!r}, "--model", {str(tmp_path / 'm')!r},
                             "--token-sites", "mlp.1", "--out", {str(tmp_path / 'b')!r}])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(cli, ["ablate", {str(tmp_path / 'c.csv')!r}, "--model", {str(tmp_path / 'm')!r},
                             "--layers", "0", "--out", {str(tmp_path / 'les')!r}])
assert r.exit_code == 0, r.output
from test_explain_local import tiny_chat_model
chat = tiny_chat_model()
chat.module.save_pretrained({str(tmp_path / 'chat')!r}); chat.tokenizer.save_pretrained({str(tmp_path / 'chat')!r})
s = llmri.scan(m, llmri.Corpus(TEXTS, LABELS), {str(tmp_path / 't')!r}, layers=[1], token_sites=("mlp.1",))
ex = llmri.Explainer(llmri.LocalLM(chat), window=4, n_explain=2, n_quantiles=1, per_quantile=1, n_non_activating=1,
                     max_new_tokens=2)
assert len(llmri.explain(s, "mlp.1", [0, 1], ex, scorers=("simulation",), tokenizer=m.tokenizer).table) == 2
r = CliRunner().invoke(cli, ["explain", {str(tmp_path / 'b')!r}, "--site", "mlp.1", "--neurons", "0",
                             "--model-name", {str(tmp_path / 'chat')!r}, "--scorers", "simulation",
                             "--out", {str(tmp_path / 'ex')!r}])
assert r.exit_code == 0, r.output
for name in cli.commands:
    assert CliRunner().invoke(cli, [name, "--help"]).exit_code == 0
print("ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers and --gpus-per-worker need --ray auto or --ray local"),
    (["--ray", "local", "--workers", "0"], "workers must be a positive integer, got 0"),
    (["--ray", "local", "--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0, got -1.0"),
    (["--ray", "cluster"], "'cluster' is not one of 'auto', 'local'"),
])
@pytest.mark.parametrize("command", ["scan", "ablate"])
def test_ray_options_are_checked_before_anything_starts(tmp_path, command, args, message):
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\na star,x\n")
    # the model does not exist: the options must be refused before it is looked for
    r = CliRunner().invoke(llmri.cli.cli, [command, str(csv), "--model", str(tmp_path / "no-model"),
                                           "--out", str(tmp_path / "out")] + args)
    assert r.exit_code != 0
    assert message in r.output or message in str(r.exception)
    assert "no-model" not in (r.output + str(r.exception))
    assert not (tmp_path / "out").exists()


def test_python_options_are_checked(tmp_path):
    corpus = llmri.Corpus(TEXTS, LABELS)
    with pytest.raises(llmri.LlmriError, match="engine 'spark' is not one of local, ray"):
        llmri.scan("x", corpus, tmp_path / "a", engine="spark")
    with pytest.raises(llmri.LlmriError, match="workers and resources apply to engine='ray'"):
        llmri.scan("x", corpus, tmp_path / "a", workers=2)
    with pytest.raises(llmri.LlmriError, match="workers and resources apply to engine='ray'"):
        llmri.lesion_map("x", corpus, resources={"GPU": 1})
    with pytest.raises(llmri.LlmriError, match="give the model's name or folder"):
        llmri.scan(make_model("gpt2"), corpus, tmp_path / "a", engine="ray")
    with pytest.raises(llmri.LlmriError, match="s3://bucket/scan: object-store URLs are not supported"):
        llmri.scan("x", corpus, "s3://bucket/scan", engine="ray")
    with pytest.raises(llmri.LlmriError, match="resources: 'GPU': -1"):
        llmri.scan("x", corpus, tmp_path / "a", engine=llmri.Engine("ray", resources={"GPU": -1}))
    assert not (tmp_path / "a").exists()

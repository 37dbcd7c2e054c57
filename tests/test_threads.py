"""The thread policy against hand-worked answers on fake /sys and /proc trees, Ray workers' share of
the cores, and the progress bars of generation, steering, clamping and the local LM."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llmri
import llmri.threads as threads
from conftest import LABELS, TEXTS, make_model
from llmri.threads import cgroup_cpu_limit, parse_cpu_list, physical_cores, split_cores, usable_cores

SRC = Path(llmri.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
NO_ENV: dict = {}


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def smt_pairs(n_cores: int) -> dict[str, str]:
    """Topology of n_cores physical cores with two threads each, numbered like Linux on x86:
    cpu c and cpu c + n_cores are siblings."""
    files = {}
    for c in range(n_cores):
        for cpu in (c, c + n_cores):
            files[f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"] = f"{c},{c + n_cores}"
    return files


# ---------------------------------------------------------------- the sources, one by one
def test_cpu_lists_parse_like_the_kernel_writes_them():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("5") == {5}
    assert parse_cpu_list("") is None and parse_cpu_list(None) is None and parse_cpu_list("a-b") is None


def test_omp_num_threads_wins_over_every_other_source(tmp_path):
    root = tree(tmp_path, {"sys/fs/cgroup/cpu.max": "100000 100000"})      # a 1-CPU quota
    assert usable_cores(root, {"OMP_NUM_THREADS": "3"}, affinity=range(8)) == 3
    assert usable_cores(root, {"OMP_NUM_THREADS": "4,2"}, affinity=range(8)) == 4   # nested levels: the first
    for bad in ("0", "-2", "abc", ""):                                       # not a count: ignored
        assert usable_cores(root, {"OMP_NUM_THREADS": bad}, affinity=range(8)) == 1


def test_smt_siblings_count_once_among_the_cpus_of_the_mask(tmp_path):
    root = tree(tmp_path, smt_pairs(4))                 # cpus 0-7 on 4 cores: (0,4) (1,5) (2,6) (3,7)
    assert usable_cores(root, NO_ENV, affinity=range(8)) == 4
    assert usable_cores(root, NO_ENV, affinity={0, 4, 1, 5}) == 2
    assert usable_cores(root, NO_ENV, affinity={0, 1, 2}) == 3
    assert usable_cores(root, NO_ENV, affinity={6}) == 1


def test_core_ids_are_told_apart_by_their_package(tmp_path):
    """Two packages of two cores, two threads each: core_id 0 exists on both packages."""
    files = {}
    for cpu in range(8):
        package, core = (cpu // 2) % 2, cpu % 2           # cpu 0,1 -> p0 c0,c1; 2,3 -> p1; 4,5 -> p0 again
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"] = str(core)
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = str(package)
    root = tree(tmp_path, files)
    assert physical_cores(range(8), root) == 4
    assert physical_cores({0, 4}, root) == 1 and physical_cores({0, 2}, root) == 2


def test_cgroup_v2_quota_of_the_process_and_its_ancestors(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/job/step\n",
                           "sys/fs/cgroup/cpu.max": "max 100000",
                           "sys/fs/cgroup/job/cpu.max": "300000 100000",        # 3 CPUs for the job
                           "sys/fs/cgroup/job/step/cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root) == 3.0
    assert usable_cores(root, NO_ENV, affinity=range(16)) == 3
    assert usable_cores(root, NO_ENV, affinity={0, 1}) == 2                  # the mask is smaller
    tree(tmp_path, {"sys/fs/cgroup/job/step/cpu.max": "150000 100000"})      # 1.5 CPUs: rounded down
    assert usable_cores(root, NO_ENV, affinity=range(16)) == 1
    tree(tmp_path, {"sys/fs/cgroup/job/step/cpu.max": "50000 100000"})       # half a CPU: still one thread
    assert usable_cores(root, NO_ENV, affinity=range(16)) == 1


def test_cgroup_v2_in_a_container_reads_the_mount_root(tmp_path):
    """Inside a container /proc/self/cgroup names a path the namespaced mount does not have."""
    root = tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1/abc\n", "sys/fs/cgroup/cpu.max": "200000 100000"})
    assert usable_cores(root, NO_ENV, affinity=range(64)) == 2


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "400000",
                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root) == 4.0
    assert usable_cores(root, NO_ENV, affinity=range(32)) == 4
    tree(tmp_path, {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1"})    # no quota
    assert cgroup_cpu_limit(root) is None
    assert usable_cores(root, NO_ENV, affinity=range(32)) == 32


def test_smt_and_quota_together(tmp_path):
    root = tree(tmp_path, {**smt_pairs(8), "sys/fs/cgroup/cpu.max": "600000 100000"})
    assert usable_cores(root, NO_ENV, affinity=range(16)) == 6               # min(8 cores, 6 CPUs)
    assert usable_cores(root, NO_ENV, affinity=range(8)) == 6                # cpus 0-7: 8 distinct cores
    assert usable_cores(root, NO_ENV, affinity={0, 8, 1, 9}) == 2


def test_unreadable_sources_are_left_out(tmp_path):
    empty = tmp_path / "nothing"
    assert cgroup_cpu_limit(empty) is None
    assert usable_cores(empty, NO_ENV, affinity={0, 1, 2}) == 3              # no topology: one core per CPU
    garbage = tree(tmp_path / "garbage", {"sys/fs/cgroup/cpu.max": "banana",
                                          "sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "x",
                                          "proc/self/cgroup": "nonsense"})
    assert usable_cores(garbage, NO_ENV, affinity={0, 1}) == 2


def test_without_an_affinity_mask_the_online_cpus_count(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    root = tree(tmp_path, {**smt_pairs(3), "sys/devices/system/cpu/online": "0-5"})
    assert usable_cores(root, NO_ENV) == 3


def test_workers_split_the_cores():
    assert [split_cores(16, w) for w in (1, 2, 3, 5, 16, 40)] == [16, 8, 5, 3, 1, 1]


# ---------------------------------------------------------------- configure_threads
@pytest.fixture
def policy(monkeypatch):
    """A fresh policy state and torch's thread count restored afterwards."""
    n = torch.get_num_threads()
    monkeypatch.setattr(threads, "_state", {})
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_torch_start_counts", lambda: {4})        # torch's own choice: 4
    yield monkeypatch
    torch.set_num_threads(n)


def test_configure_threads_sizes_torch_once_and_turns_tokenizers_off(policy):
    torch.set_num_threads(4)                                                 # as torch started
    policy.setattr(threads, "usable_cores", lambda: 1)
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    torch.set_num_threads(3)                                                 # the user, afterwards
    assert threads.configure_threads() == 3 and torch.get_num_threads() == 3  # left alone


def test_configure_threads_leaves_the_users_choices_alone(policy):
    policy.setattr(threads, "usable_cores", lambda: 1)
    torch.set_num_threads(3)                                                 # not torch's start-up count
    policy.setenv("TOKENIZERS_PARALLELISM", "true")
    assert threads.configure_threads() == 3 and torch.get_num_threads() == 3
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    policy.setattr(threads, "_state", {})
    torch.set_num_threads(4)
    policy.setenv("OMP_NUM_THREADS", "4")                                    # torch obeyed it at start-up
    assert threads.configure_threads() == 4 and torch.get_num_threads() == 4


def test_configure_threads_with_a_count(policy):
    assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(llmri.LlmriError, match=r"^configure_threads: n must be a positive integer"):
            threads.configure_threads(bad)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch starts with one thread here anyway")
def test_a_count_given_before_torch_starts_reaches_it():
    """(torch caps an OMP_NUM_THREADS above the machine's CPUs, so the count asked for is 1.)"""
    code = ("import sys, llmri.threads as t; t.configure_threads(1); assert 'torch' not in sys.modules; "
            "import torch; print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(SRC)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------------- Ray workers' share
def threads_and_cpus(_, item):
    import ray
    import torch

    return torch.get_num_threads(), ray.get_runtime_context().get_assigned_resources().get("CPU")


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}})
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("workers, resources, expected", [
    (1, None, (2, 2)),             # one worker takes both cores of the 2-core machine
    (2, None, (1, 1)),             # two split them
    (1, {"CPU": 1}, (1, 1)),       # a CPU amount given is used as it is
])
def test_ray_workers_split_the_cores_and_run_that_many_threads(cluster, monkeypatch, workers, resources, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")       # this process's cores: 2, whatever machine runs the test
    engine = llmri.Engine("ray", workers=workers, resources=resources)
    got = engine.map(threads_and_cpus, range(2 * workers))
    assert set(got) == {expected}


# ---------------------------------------------------------------- progress bars
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def decoder():
    return make_model("llama")


def bars(fn, progress, monkeypatch, tty=False):
    """``fn(progress)`` and what it wrote to stderr (a fake terminal when ``tty``)."""
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    return fn(progress), err.getvalue()


def test_generate_shows_a_bar_of_tokens_only_when_asked_or_on_a_terminal(decoder, monkeypatch):
    def run(progress):
        return llmri.generate(decoder, TEXTS[:3], max_new_tokens=5, batch_size=2, progress=progress)

    quiet, err = bars(run, False, monkeypatch, tty=True)
    assert err == ""
    loud, err = bars(run, True, monkeypatch)
    assert "generating" in err and "10/10" in err        # 2 batches x 5 tokens
    assert loud == quiet
    on_tty, err = bars(run, None, monkeypatch, tty=True)
    assert "10/10" in err and on_tty == quiet
    _, err = bars(run, None, monkeypatch)                # stderr is no terminal: quiet
    assert err == ""


def test_steer_sweep_steps_once_per_alpha_and_batch(decoder, tmp_path, monkeypatch):
    scan = llmri.scan(decoder, llmri.Corpus(TEXTS, LABELS), tmp_path / "s", progress=False)

    def run(progress):
        return llmri.steer_sweep(decoder, scan, "space", "food", 2, [-2, 0, 2], ["the sun", "a comet"],
                                 max_new_tokens=4, progress=progress)

    quiet, err = bars(run, False, monkeypatch, tty=True)
    assert err == ""
    loud, err = bars(run, True, monkeypatch)
    assert "steering" in err and "3/3" in err and "alpha=2" in err
    assert loud.equals(quiet)
    _, err = bars(run, None, monkeypatch)
    assert err == ""


def test_clamp_generations_are_the_hand_loop_and_show_a_bar(decoder, monkeypatch):
    from test_sae_features import orthonormal_sae

    from llmri.sae import clamp
    from llmri.sae.clamp import clamp_generations

    sae = orthonormal_sae(32, 8, "resid.2")
    sae.feature_max[3] = 2.0
    prompt = "the star shines"
    want = [("none (original)", llmri.generate(decoder, prompt, max_new_tokens=5))]
    for v, value in (("0", 0.0), ("30x", 60.0)):
        with clamp(decoder, sae, {3: value}):
            want.append((f"{v} = {value:.4g}", llmri.generate(decoder, prompt, max_new_tokens=5)))

    def run(progress):
        return clamp_generations(decoder, sae, 3, ["0", "30x"], prompt, max_new_tokens=5, progress=progress)

    quiet, err = bars(run, False, monkeypatch, tty=True)
    assert quiet == want and err == ""
    loud, err = bars(run, True, monkeypatch)
    assert loud == want and "clamping" in err and "3/3" in err
    with pytest.raises(llmri.LlmriError, match="out of range"):
        clamp_generations(decoder, sae, 8, ["1"], prompt)


def test_local_lm_shows_a_bar_per_reply(decoder, monkeypatch):
    messages = [{"role": "user", "content": "the star"}]

    def run(progress):
        return llmri.LocalLM(decoder, chat=False, progress=progress).chat(messages, max_tokens=6)

    quiet, err = bars(run, False, monkeypatch, tty=True)
    assert err == ""
    loud, err = bars(run, True, monkeypatch)
    assert "local LM reply" in err and loud == quiet
    _, err = bars(run, None, monkeypatch)
    assert err == ""
    with pytest.raises(llmri.LlmriError, match="^progress must be None"):
        llmri.LocalLM(decoder, progress="yes")


def test_the_generate_command_is_quiet_when_stderr_is_no_terminal(decoder, tmp_path):
    from click.testing import CliRunner

    import llmri.cli

    decoder.module.save_pretrained(tmp_path / "m")
    decoder.tokenizer.save_pretrained(tmp_path / "m")
    res = CliRunner().invoke(llmri.cli.cli, ["generate", "--model", str(tmp_path / "m"), "--max-new-tokens", "4",
                                              "--json", "the sun"])
    assert res.exit_code == 0, res.output
    assert "generating" not in res.stderr and "generation" in res.stdout

"""Explain through the OpenAI-compatible backend against a real HTTP server on 127.0.0.1.

The server (started by each test, standard library only) answers ``/v1/chat/completions`` and
``/v1/completions`` (with ``echo`` and ``logprobs``) by a fixed rule over the request: it explains
a unit by the tokens marked active ("digits" or "the word W") and simulates, detects and judges
markings by that rule. An oracle, so the scores of the right explanation are known exactly.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import llmri
from llmri.explain import OpenAICompatible, explain_units

SECRET = "sk-test-4f1c9a7e2b"


def _rule(explanation: str):
    e = explanation.strip().rstrip(".").lower()
    if "digit" in e:
        return lambda t: t.strip().isdigit()
    word = e.split()[-1]
    return lambda t: t.strip().lower() == word


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _explanation_of(prompt: str) -> str:
    m = re.search(r"neuron 2 behavior: the main thing this neuron does is find (.*)\.\n", prompt) or \
        re.search(r"Explanation of the feature: (.*)\n", prompt)
    return m.group(1)


def _answer_chat(messages) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    if "say in one sentence" in system:                           # the explainer
        active = []
        for block in user.split("with all zeros filtered out:\n<start>\n")[1:]:
            active += [line.split("\t")[0] for line in block.split("\n<end>")[0].splitlines()]
        if all(t.strip().isdigit() for t in active):
            return "the main thing this neuron does is find digits."
        return f"the word {max(set(active), key=active.count).strip()}. It is common."
    if "Explanation of" not in user:
        return "Hello."
    rule = _rule(_explanation_of(user))
    if "predict its activation" in system:                        # the simulator, parsed numbers
        toks = [line.split("\t")[0] for line in user.split("<start>\n")[-1].split("<end>")[0].splitlines()]
        return "\n".join(f"{t}\t{10 if rule(t) else 0}" for t in toks) + "\n<end>"
    examples = re.findall(r"^Example (\d+): (.*)$", user, flags=re.M)
    if "feature is present" in system:                            # detection
        return "\n".join(f"Example {i}: {int(any(rule(w) for w in _words(text)))}" for i, text in examples)
    out = []                                                      # fuzzing
    for i, text in examples:
        marked = re.findall(r"<<(.*?)>>", text)
        out.append(f"Example {i}: {int(bool(marked) and all(rule(m) for m in marked))}")
    return "\n".join(out)


def _echo_logprobs(prompt: str) -> dict:
    """Prompt tokens (runs of non-space characters, each whitespace character alone) with the
    rule's distribution wherever a value is to be predicted."""
    rule = _rule(_explanation_of(prompt))
    toks = [(m.start(), m.group()) for m in re.finditer(r"[^\s]+|\s", prompt)]
    top = []
    for start, t in toks:
        before = prompt[:start]
        dist = {}
        if before.endswith("\t") and t == "unknown":
            tok = before[:-1].split("\n")[-1]
            dist = {"10": -0.01, "0": -5.0} if rule(tok) else {"0": -0.01, "10": -5.0}
        elif re.search(r"Example (\d+):$", before) and t == " ":
            n = int(re.search(r"Example (\d+):$", before).group(1))
            text = re.findall(rf"^Example {n}: (.*)$", prompt, flags=re.M)[0]
            marked = re.findall(r"<<(.*?)>>", text)
            yes = (all(rule(m) for m in marked) and bool(marked)) if marked else any(rule(w) for w in _words(text))
            dist = {"1": -0.1, "0": -3.0} if yes else {"0": -0.1, "1": -3.0}
        top.append(dist)
    return {"tokens": [t for _, t in toks], "token_logprobs": [-1.0] * len(toks), "top_logprobs": top,
            "text_offset": [s for s, _ in toks]}


class Server:
    """An OpenAI-compatible HTTP server on a free localhost port, in a background thread."""

    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "ok"                      # ok | error | slow
        self.fail_after: int | None = None    # answer HTTP 500 from this request on
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(dict(path=self.path, auth=self.headers.get("Authorization"), body=body))
                if server.mode == "slow":
                    time.sleep(1.5)
                if server.mode == "error" or (server.fail_after is not None and len(server.requests) > server.fail_after):
                    return self._send(500, {"error": {"message": "the model crashed", "type": "server_error"}})
                if self.path.endswith("/chat/completions"):
                    text = _answer_chat(body["messages"])
                    return self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": text}}],
                                            "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                                                      "completion_tokens": len(text.split()),
                                                      "total_tokens": 0}})
                if self.path.endswith("/completions"):
                    lp = _echo_logprobs(body["prompt"])
                    return self._send(200, {"id": "t1", "object": "text_completion", "created": 0, "model": body["model"],
                                            "choices": [{"index": 0, "text": body["prompt"] + "0", "finish_reason": "length",
                                                         "logprobs": lp}],
                                            "usage": {"prompt_tokens": len(lp["tokens"]), "completion_tokens": 1,
                                                      "total_tokens": len(lp["tokens"]) + 1}})
                self._send(404, {"error": {"message": "no such route"}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        if self.thread is None:
            return
        self.thread = None
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def planted(n_docs=24, length=20, seed=0):
    """Documents of words and digits; unit 0 fires on digits, unit 1 on " sun", unit 2 on " the"."""
    rng = np.random.default_rng(seed)
    words = [" the", " sun", " star", " 4", " 7", " 12", " moon", ",", " and", " over"]
    docs = [[words[i] for i in rng.integers(0, len(words), length)] for _ in range(n_docs)]
    flat = [t for d in docs for t in d]
    acts = np.stack([[5.0 * t.strip().isdigit() for t in flat], [3.0 * (t == " sun") for t in flat],
                     [2.0 * (t == " the") for t in flat]], 1).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return acts, offsets, (lambda d: docs[d])


def explainer(backend, **kw):
    return llmri.Explainer(backend, window=5, n_explain=4, n_quantiles=2, per_quantile=3, n_non_activating=4, **kw)


@pytest.mark.parametrize("logprobs", [False, True])
def test_oracle_server_scores_the_right_explanation_perfectly(server, tmp_path, logprobs):
    acts, offsets, tokens = planted()
    be = OpenAICompatible(server.url, "oracle", concurrency=2, completion_logprobs=logprobs, price_per_mtok=(1.0, 2.0))
    res = explain_units(acts, offsets, tokens, [0, 1, 2], explainer(be), out=tmp_path / "out", page=False)
    t = res.table.set_index("unit")
    assert t.loc[0, "explanation"] == "digits"
    assert t.loc[1, "explanation"] == "the word sun" and t.loc[2, "explanation"] == "the word the"
    np.testing.assert_allclose(t["simulation_score"], 1.0, atol=1e-9)
    np.testing.assert_allclose(t["detection_balanced_accuracy"], 1.0)
    np.testing.assert_allclose(t["fuzzing_balanced_accuracy"], 1.0)
    assert (t["simulation_baseline"] < 0.5).all() and (t["detection_baseline"] < 1).all()
    assert (t["parse_failures"] == 0).all()
    paths = {r["path"] for r in server.requests}
    assert paths == ({"/v1/chat/completions", "/v1/completions"} if logprobs else {"/v1/chat/completions"})
    # token and cost accounting from the server's usage fields
    chat = [r for r in server.requests if r["path"].endswith("chat/completions")]
    assert res.info["stats"]["calls"] == len(server.requests)
    assert t["prompt_tokens"].sum() <= res.info["stats"]["prompt_tokens"]
    assert res.info["stats"]["cost"] == pytest.approx((res.info["stats"]["prompt_tokens"] * 1.0
                                                       + res.info["stats"]["completion_tokens"] * 2.0) / 1e6)
    assert len(chat) >= 3


def test_rerun_makes_no_http_call_and_an_interrupted_run_resumes(server, tmp_path):
    acts, offsets, tokens = planted()
    be = OpenAICompatible(server.url, "oracle", concurrency=1)
    full = explain_units(acts, offsets, tokens, [0, 1, 2], explainer(be), out=tmp_path / "a", page=False)
    total = len(server.requests)
    rerun = explain_units(acts, offsets, tokens, [0, 1, 2], explainer(OpenAICompatible(server.url, "oracle")),
                          out=tmp_path / "a", page=False)
    assert len(server.requests) == total                      # zero HTTP calls
    assert full.info["stats"]["calls"] == total
    assert rerun.info["stats"]["calls"] == 0
    assert rerun.info["stats"]["cache_hits"] == total + full.info["stats"]["cache_hits"]
    assert rerun.table.equals(full.table)

    server.requests.clear()
    server.fail_after = 7                                     # the server dies after 7 answers
    with pytest.raises(llmri.LlmriError, match="HTTP 500") as e:
        explain_units(acts, offsets, tokens, [0, 1, 2], explainer(OpenAICompatible(server.url, "oracle", max_retries=0)),
                      out=tmp_path / "b", page=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "b" / "explanations.csv").exists()           # nothing half-written
    assert len(list((tmp_path / "b" / "calls").rglob("*.json"))) == 7
    assert not list((tmp_path / "b").rglob("*.tmp"))
    server.requests.clear()
    server.fail_after = None
    resumed = explain_units(acts, offsets, tokens, [0, 1, 2], explainer(OpenAICompatible(server.url, "oracle")),
                            out=tmp_path / "b", page=False)
    assert len(server.requests) == total - 7                  # only what was not paid for yet
    assert resumed.table.equals(full.table)


def test_server_errors_are_one_line(server, tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    server.mode = "error"
    with pytest.raises(llmri.LlmriError, match=r"answered HTTP 500 \(.*the model crashed") as e:
        OpenAICompatible(server.url, "m", max_retries=0).chat(msgs)
    assert "\n" not in str(e.value)
    server.mode = "slow"
    with pytest.raises(llmri.LlmriError, match="no answer within 0.3 s"):
        OpenAICompatible(server.url, "m", timeout=0.3, max_retries=0).chat(msgs)
    server.close()
    with pytest.raises(llmri.LlmriError, match="cannot connect to the server"):
        OpenAICompatible(server.url, "m", max_retries=0, cache_dir=tmp_path / "c").chat(msgs)
    assert not (tmp_path / "c").exists()
    with pytest.raises(llmri.LlmriError, match="base_url must start with http"):
        OpenAICompatible("localhost:8080", "m")
    with pytest.raises(llmri.LlmriError, match="concurrency must be a positive integer"):
        OpenAICompatible(server.url, "m", concurrency=0)


def test_api_key_only_from_the_environment_and_never_written(server, tmp_path, monkeypatch, caplog, capsys):
    acts, offsets, tokens = planted()
    with pytest.raises(llmri.LlmriError, match="environment variable LLMRI_TEST_KEY is not set"):
        OpenAICompatible(server.url, "oracle", api_key_env="LLMRI_TEST_KEY").chat([{"role": "user", "content": "x"}])
    monkeypatch.setenv("LLMRI_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    be = OpenAICompatible(server.url, "oracle", api_key_env="LLMRI_TEST_KEY")
    explain_units(acts[:, :2], offsets, tokens, [0, 1], explainer(be), out=tmp_path / "out", page=False)
    assert server.requests and all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(encoding="utf-8"), f
    out, err = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in out and SECRET not in err
    assert SECRET not in repr(be) and SECRET not in json.dumps(be._identity())


def test_cli_explain_against_the_server(server, tmp_path, capsys):
    """``llmri explain`` on a scan of a tiny model saved to a folder, backend openai."""
    from conftest import LABELS, TEXTS, make_model

    m = make_model("llama")
    m.module.save_pretrained(tmp_path / "tiny")
    m.tokenizer.save_pretrained(tmp_path / "tiny")
    model = llmri.load_model(str(tmp_path / "tiny"))
    llmri.scan(model, llmri.Corpus(TEXTS * 2, LABELS * 2), tmp_path / "scan", sites=("resid",), layers=[1],
               token_sites=("mlp.1",), progress=False)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "llmri", "explain", str(tmp_path / "scan"), *args],
                              capture_output=True, text=True, timeout=300)

    def run_here(*args):                      # the same entry point in this process (start-up is slow)
        from llmri.cli import main

        with pytest.raises(SystemExit) as e:
            main(["explain", str(tmp_path / "scan"), *args])
        out, err = capsys.readouterr()
        return e.value.code, out, err

    common = ["--backend", "openai", "--base-url", server.url, "--model-name", "oracle", "--out", str(tmp_path / "ex")]
    p = run("--site", "mlp.1", "--neurons", "0,5", *common)
    assert p.returncode == 0, p.stderr
    assert "explanations:" in p.stdout and (tmp_path / "ex" / "explanations.csv").is_file()
    n = len(server.requests)
    assert n > 0
    code, out, _ = run_here("--site", "mlp.1", "--neurons", "0,5", *common)
    assert code == 0 and len(server.requests) == n and "0 calls" in out
    for args, pattern in [(("--site", "resid.1", "--neurons", "0"), "'resid.1' has no token-level records"),
                          (("--site", "mlp.1", "--neurons", "x"), "units 'x': expected top:K"),
                          (("--site", "mlp.1", "--neurons", "0", "--scorers", "vibes"), "--scorers 'vibes'"),
                          (("--site", "mlp.1", "--neurons", "999"), "neuron 999 is out of range"),
                          (("--site", "mlp.1", "--neurons", "0", "--simulator", "pmi"), "--simulator pmi needs --backend local")]:
        code, _, err = run_here(*args, *common)
        lines = err.strip().splitlines()
        assert code == 1 and "Traceback" not in err and pattern in lines[-1], err
    server.close()
    code, _, err = run_here("--site", "mlp.1", "--neurons", "1,2", *common[:-1], str(tmp_path / "ex2"))
    assert code == 1 and "cannot connect to the server" in err.strip().splitlines()[-1]
    assert not (tmp_path / "ex2" / "explanations.csv").exists()

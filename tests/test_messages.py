"""What llmri tells the user is true: Ctrl-C says "rerun to continue" only where a rerun continues,
a cached explain rerun reports the tokens it spent (none), and prompts or strengths that would
generate nothing are refused before a model loads."""

from __future__ import annotations

import json

import pytest

import llmri.cli
from llmri.commands.explain import usage_line
from llmri.explain.backends import Backend


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        llmri.cli.main(list(args))
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, resumes", [
    (["scan", "docs.csv", "--out", "o"], True), (["explain", "s", "--site", "mlp.1"], True), (["demo"], True),
    (["steer", "a prompt", "--scan", "s"], False), (["--debug", "generate", "hi"], False),
    (["sae", "train", "s", "--site", "resid.1", "--out", "o"], False), (["circuit", "a prompt"], False),
    (["sae", "train", "--model", "tiny", "--corpus", "c.csv", "--site", "resid.1", "--out", "o"], True),
    (["sae", "train", "--corpus", "c.csv", "--model=tiny", "--sites", "resid.1", "--out", "o"], True),
])
def test_ctrl_c_promises_a_continuation_only_where_there_is_one(args, resumes, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(llmri.cli.cli, "main", interrupted)
    code, err = run_cli(args, capsys)
    assert code == 130
    assert err.strip() == "llmri: error: interrupted" + (
        "; rerun the same command to continue where it stopped" if resumes else "")


class Counting(Backend):
    """A backend whose every answer costs 10 prompt and 4 completion tokens."""

    kind = "counting"
    made = 0

    @property
    def model_name(self) -> str:
        return "counting"

    def _chat(self, messages, max_tokens, temperature, seed, prefill="") -> dict:
        Counting.made += 1
        return {"text": "an answer", "prompt_tokens": 10, "completion_tokens": 4}


def test_a_cached_rerun_reports_no_tokens_spent(tmp_path):
    first = Counting(cache_dir=tmp_path / "calls")
    for i in range(3):
        first.chat([{"role": "user", "content": f"question {i}"}])
    assert usage_line(first.stats) == "3 calls, 30 prompt and 12 completion tokens spent"
    again = Counting(cache_dir=tmp_path / "calls")
    for i in range(4):                      # three answers cached, one new
        again.chat([{"role": "user", "content": f"question {i}"}])
    assert Counting.made == 4
    assert usage_line(again.stats) == ("1 calls, 10 prompt and 4 completion tokens spent; 3 answers from the "
                                       "cache (they took 30 prompt and 12 completion tokens when made)")
    assert again.stats["prompt_tokens"] == 40   # what the answers used cost, cached ones included


@pytest.mark.parametrize("args, message", [
    (["generate", ""], "PROMPTS: prompt 0 is empty (''); give some text"),
    (["generate", "fine", "   "], "PROMPTS: prompt 1 is only whitespace ('   '); give some text"),
    (["steer", "  ", "--scan", "s", "--positive", "a", "--negative", "b", "--layer", "1", "--out", "o"],
     "PROMPTS: prompt 0 is only whitespace"),
    (["steer", "hi", "--scan", "s", "--positive", "a", "--negative", "b", "--layer", "1", "--out", "o",
      "--alphas", "nan,inf"], "--alphas: nan is not a finite number"),
    (["steer", "hi", "--scan", "s", "--positive", "a", "--negative", "b", "--layer", "1", "--out", "o",
      "--alphas", "1,-inf"], "--alphas: -inf is not a finite number"),
])
def test_prompts_and_strengths_that_generate_nothing_are_refused(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 1 and err.startswith(f"llmri: error: {message}"), err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_the_library_refuses_them_too():
    from llmri.errors import LlmriError
    from llmri.generate import check_alphas, check_prompts

    with pytest.raises(LlmriError, match="prompts: prompt 2 is only whitespace"):
        check_prompts(["a", "b", "\n\t"])
    with pytest.raises(LlmriError, match="alphas: inf is not a finite number"):
        check_alphas([0, float("inf")])
    assert check_alphas("2") == [2.0] and check_alphas([-4, 0, 4]) == [-4.0, 0.0, 4.0]
    check_prompts([[{"role": "user", "content": "hi"}]])   # chat messages: left to the template


def test_steer_json_holds_null_for_an_unscored_generation(tmp_path):
    import pandas as pd

    from llmri.report import steer_page

    sweep = pd.DataFrame({"prompt": ["p", "p"], "alpha": [-4.0, 4.0], "generation": ["", "space"],
                          "p_positive": [float("nan"), 0.75]})
    sweep.attrs.update(positive="space", negative="food", site="resid.1", probe_layer=1, mode="add", vector_norm=2.0)
    steer_page(sweep, tmp_path / "steer", "tiny", "runs/s", alphas=[-4.0, 4.0], max_new_tokens=4)
    text = (tmp_path / "steer" / "steer.json").read_text()
    assert "NaN" not in text and json.loads(text)["rows"][0]["p_positive"] is None
    assert json.loads(text)["rows"][1]["p_positive"] == 0.75

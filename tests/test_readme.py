"""The README runs as written: every fenced ``bash`` and ``python`` block, in order, offline.

Convention for README authors (follow it when you add a section):

* Every ```bash and ```python block is run, top to bottom, in one fresh folder (a stand-in
  for a fresh clone: paths such as ``data/news/`` and ``runs/`` are relative to it). Bash
  blocks run with ``set -e`` and ``llmri`` on the PATH; Python blocks share one namespace, so a
  later block may use ``scan``, ``model``, ``rm`` ... from an earlier one.
* A block that cannot run offline, installs things, or is a synopsis rather than a command
  gets an HTML comment on the line right before its opening fence, with the reason:
  ``<!-- readme-test: skip REASON -->``. Keep such blocks few.
* Other fences (```text, ```json, indented output) are not run.

Slow (it scans, builds a report and a small lesion map with the real default model), so it is
marked ``slow`` and ``integration``: run it with ``pytest -m slow tests/test_readme.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llmri

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = str(Path(llmri.__file__).resolve().parents[1])
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, skip_reason)`` of every fenced block, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(prev)
        blocks.append((start + 1, lang, "\n".join(lines[start + 1:j]), skip.group(1).strip() if skip else None))
        i = j + 1
    return blocks


def test_blocks_are_found_and_skips_give_a_reason():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert len([b for b in blocks if b[1] in ("bash", "python")]) >= 10
    for line, lang, _, skip in blocks:
        assert skip is None or skip, f"README line {line}: a readme-test skip needs a reason"
    fake = "x\n<!-- readme-test: skip offline -->\n```bash\nfalse\n```\n```python\nx = 1\n```\n"
    assert readme_blocks(fake) == [(3, "bash", "false", "offline"), (6, "python", "x = 1", None)]


@pytest.mark.slow
@pytest.mark.integration
def test_readme_runs_as_written(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llmri").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m llmri "$@"\n')
    (bin_dir / "llmri").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "python").symlink_to(sys.executable)
    work = tmp_path / "clone"
    work.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), MPLBACKEND="Agg")
    monkeypatch.chdir(work)
    import matplotlib
    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for line, lang, code, skip in readme_blocks(README.read_text(encoding="utf-8")):
        if skip is not None or lang not in ("bash", "python"):
            continue
        if lang == "bash":
            proc = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert proc.returncode == 0, f"README line {line} (bash) failed:\n{code}\n{proc.stderr[-2000:]}"
        else:
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as e:  # name the block, not just the exception
                raise AssertionError(f"README line {line} (python) failed: {type(e).__name__}: {e}\n{code}") from e
        ran += 1
    assert ran >= 10

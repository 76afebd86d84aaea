"""Docs that cannot drift: every ```python block in README.md and docs/*.md runs.

The blocks of one file run in order in one namespace (a later block may use an earlier block's names,
as a reader following the page would), in a fresh interpreter with one thread, offline, in a temporary
directory. A block whose first line is `# template` (placeholders: your paths, your hub ids) is skipped
by name. A failure names the file and the line where the failing block starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TEMPLATE = "# template"
SLOW = {"bottleneck.md", "lens.md"}  # zoo-scale tables / a tuned lens fit: minutes on 2 cores

RUNNER = """
import sys, traceback, torch
torch.set_num_threads(1)
import matplotlib
matplotlib.use("Agg")
ns = {"__name__": "__main__"}
for line, code in BLOCKS:
    try:
        exec(compile(code, f"{FILE}:{line}", "exec"), ns)
    except Exception:
        traceback.print_exc()
        print(f"DOC BLOCK FAILED: {FILE} block starting at line {line}", file=sys.stderr)
        sys.exit(1)
"""


def blocks(path: Path) -> list[tuple[int, str]]:
    """(first code line, code) of each python block of `path`, templates left out."""
    text = path.read_text()
    out = []
    for m in BLOCK.finditer(text):
        code = m.group(1)
        if code.lstrip().startswith(TEMPLATE):
            continue
        out.append((text.count("\n", 0, m.start(1)) + 1, code))
    return out


def test_blocks_are_found_and_templates_say_so():
    found = {p.name: blocks(p) for p in FILES}
    assert sum(len(b) for b in found.values()) >= 15
    text = (ROOT / "docs" / "models.md").read_text()
    assert TEMPLATE in text  # the hub-id / your-dir example is a template, skipped by name


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
                                  for p in FILES if blocks(p)])
def test_doc_blocks_run(path, tmp_path):
    script = f"FILE = {str(path.relative_to(ROOT))!r}\nBLOCKS = {blocks(path)!r}\n" + RUNNER
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_study_pages_are_their_generated_reports():
    """Each docs/study_<name>.md is exactly its published run's report (`studies.docs_page_text` of
    docs/img/study_<name>/report.json): no second, hand-written interpretation can drift from the numbers;
    every figure it links is there. Republish with `dgt-interp case-study render NAME DIR --docs docs`."""
    import json

    from dgt_interp.studies import docs_page_text, get_study

    pages = sorted((ROOT / "docs").glob("study_*.md"))
    assert len(pages) >= 5
    for page in pages:
        name = page.stem.removeprefix("study_")
        img = ROOT / "docs" / "img" / page.stem
        numbers = json.loads((img / "report.json").read_text())
        assert not numbers.get("quick"), f"{page.name} was published from a --quick run"
        text = page.read_text()
        assert text == docs_page_text(get_study(name), numbers), f"{page.name} is not its report: republish it"
        assert "## What this run shows" in text
        for link in re.findall(r"\]\((img/[^)]+)\)", text):
            assert (ROOT / "docs" / link).is_file(), f"{page.name} links a missing {link}"

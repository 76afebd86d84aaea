"""A probe registered from a file outside the package shows up in a packaged study's report (its table
and report.json) with no edit to the study, and the report still re-renders from report.json."""

from __future__ import annotations

import importlib.util
import json

from dgt_interp.phenomena import unregister_probe
from dgt_interp.studies import rerender, run_study

PROBE_FILE = '''
from matplotlib.figure import Figure

from dgt_interp.phenomena import register_probe


class StepCount:
    def __init__(self, n):
        self.n = n

    def to_dict(self):
        return {"summary": self.n, "steps": self.n}

    def figure(self, title=""):
        return Figure()


@register_probe("outside_step_count", description="denoising steps of canvas 0, from a file outside the package")
def step_count(traj, *, eos_id=None):
    return StepCount(len(traj.canvas_steps(0)))
'''


def test_a_probe_from_outside_appears_in_a_study_report(tmp_path):
    path = tmp_path / "my_probes.py"
    path.write_text(PROBE_FILE)
    spec = importlib.util.spec_from_file_location("my_probes_for_studies", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    out = tmp_path / "sudoku"
    try:
        report = run_study("sudoku", out=out, quick=True, progress=False)
    finally:
        unregister_probe("outside_step_count")
    numbers = json.loads((out / "report.json").read_text())
    steps = {name: d["outside_step_count"]["steps"] for name, d in numbers["probes"].items()}
    assert set(steps) == set(numbers["settings"]) | {"AR twin (greedy)"} and all(n >= 1 for n in steps.values())
    text = (out / "report.md").read_text()
    assert "| setting | outside_step_count |" in text
    for name, n in steps.items():
        assert f"| {name} | {n} |" in text
    assert report.markdown.strip() in text
    before = text
    rerender("sudoku", out)  # the probe is no longer registered: the table comes from report.json alone
    assert (out / "report.md").read_text() == before

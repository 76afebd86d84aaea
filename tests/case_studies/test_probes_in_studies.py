"""A probe registered from a file outside the package shows up in a packaged study's report (its table
and report.json) with no edit to the study, and the report still re-renders from report.json."""

from __future__ import annotations

import json

from dgt_interp.phenomena import unregister_probe
from dgt_interp.studies import rerender, run_study


def test_a_probe_from_outside_appears_in_a_study_report(tmp_path, outside_probe):
    out = tmp_path / "sudoku"
    report = run_study("sudoku", out=out, quick=True, progress=False)
    unregister_probe(outside_probe)  # rerender below must not need it
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

"""`studies.rerender` without a model: the errors, and a report re-rendered from a hand-written
report.json with a toy renderer (NaN read back as None)."""

from __future__ import annotations

import json

import pytest

from dgt_interp.causal import CaseStudyError
from dgt_interp.studies import CaseStudy, Report, rerender
from dgt_interp.tasks import ADDITION


def _render(numbers: dict) -> str:
    from case_studies.common_report import f3

    return f"x = {f3(numbers['x'])}, n = {numbers['n']}"


def _study(render=_render) -> CaseStudy:
    return CaseStudy("toy", ADDITION, "a toy", run=lambda ctx: None, render=render, title="Toy report")


def test_rerender_rewrites_report_md_from_report_json(tmp_path):
    Report("Toy report", _render({"x": float("nan"), "n": 3}), {}, {"x": float("nan"), "n": 3}).write(tmp_path)
    before = (tmp_path / "report.md").read_bytes()
    assert json.loads((tmp_path / "report.json").read_text())["x"] is None
    (tmp_path / "report.md").write_text("stale")
    assert rerender(_study(), tmp_path) == tmp_path / "report.md"
    assert (tmp_path / "report.md").read_bytes() == before == b"# Toy report\n\nx = n/a, n = 3\n"


def test_rerender_errors(tmp_path):
    with pytest.raises(CaseStudyError, match="no report.json"):
        rerender(_study(), tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(CaseStudyError, match="no renderer"):
        rerender(_study(render=None), tmp_path)


def test_iia_table_reads_results_and_their_json_alike():
    from case_studies.common_report import as_json
    from dgt_interp.causal import BaselineResult, IIAResult
    from dgt_interp.studies import iia_table

    nan = float("nan")
    r = IIAResult("h", "diffusion", ["s"], 4, 3, 0.75, (0.3, 0.95), 0, 0, nan, (nan, nan))
    b = BaselineResult([IIAResult(f"random #{k}", "diffusion", ["s"], 4, k, k / 4, (0.0, 1.0), 2, k, k / 2,
                                  (0.0, 1.0)) for k in range(3)])
    rows = [("hyp", r), ("random", b)]
    want = iia_table(rows)
    assert "| hyp | diffusion | nan | nan–nan | 0 | 0.750 | 4 |" in want
    assert "| random (mean of 3 draws) | diffusion | 0.500 | min 0.000 – max 1.000 | 2 | 0.250 | 4 |" in want
    assert iia_table([(label, x.to_dict()) for label, x in rows]) == want  # live dicts (NaN, tuples)
    assert iia_table(as_json([(label, x.to_dict()) for label, x in rows])) == want  # as read from report.json


def test_quick_runs_say_so_at_the_top_and_rerender_keeps_it(tmp_path):
    """A --quick report opens with the quick-run banner (its small n carries no conclusions); a full one has none."""
    from dgt_interp.studies import QUICK_BANNER

    numbers = {"x": 0.5, "n": 3, "quick": True}
    Report("Toy report", _render(numbers), {}, numbers).write(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.splitlines()[2] == QUICK_BANNER and "do not draw conclusions" in text
    rerender(_study(), tmp_path)
    assert (tmp_path / "report.md").read_text() == text
    Report("Toy report", _render(numbers), {}, dict(numbers, quick=False)).write(tmp_path / "full")
    assert "Quick run" not in (tmp_path / "full" / "report.md").read_text()

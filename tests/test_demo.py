"""`make demo`'s job: the printed denoising trace matches a captured trajectory and the answer."""

import pytest

from dgt_interp import zoo
from dgt_interp.cli import main
from dgt_interp.demo import show_tokens


def test_show_tokens_marks_accepted_positions():
    assert show_tokens([4, 5, 1, 0], accepted=[True, False, True, False]) == "[1] 2 [$] _ "


@pytest.mark.skipif("addition-diffusion" not in zoo.names(), reason="zoo model not shipped")
def test_demo_prints_every_step_and_solves_the_problems(capsys):
    assert main(["demo", "-n", "2", "--study", "none"]) == 0
    out = capsys.readouterr().out
    assert "2/2 correct" in out
    # every problem shows at least one step line with the HF step counter starting at 48
    assert out.count("    0       48  ") == 2


@pytest.mark.skipif("addition-diffusion" not in zoo.names(), reason="zoo model not shipped")
def test_demo_runs_the_flagship_study_and_says_where_the_report_is(tmp_path, capsys):
    assert main(["demo", "-n", "1", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "addition" / "report.md"
    assert f"Report: {report}" in out and report.is_file()
    assert (tmp_path / "addition" / "report.json").is_file()

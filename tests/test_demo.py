"""`make demo`'s job: the printed denoising trace matches a captured trajectory and the answer."""

import json

import pytest

from dgt_interp import zoo
from dgt_interp.tokenizer import load_tokenizer
from dgt_interp.cli import main
from dgt_interp.demo import show_tokens


def test_show_tokens_marks_accepted_positions():
    assert show_tokens([4, 5, 1, 0], accepted=[True, False, True, False]) == "[1] 2 [$] _ "


@pytest.mark.skipif("addition-diffusion" not in zoo.names(), reason="zoo model not shipped")
def test_demo_prints_every_step_and_solves_the_problems(tmp_path, capsys):
    assert main(["demo", "-n", "2", "--study", "none", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "2/2 correct" in out
    # every problem shows at least one step line with the HF step counter starting at 48
    assert out.count("    0       48  ") == 2


@pytest.mark.skipif("addition-diffusion" not in zoo.names(), reason="zoo model not shipped")
def test_demo_writes_the_viewer_page_of_its_first_problem(tmp_path, capsys):
    """The page shows the run whose trace is printed first: its steps' argmax canvases are the printed ones."""
    import base64
    import re

    import numpy as np

    assert main(["demo", "-n", "1", "--study", "none", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    page = tmp_path / "viewer.html"
    assert "viewer page of " in out and f": {page} (" in out and f"Viewer page of the first problem: {page}" in out
    html = page.read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1))
    arr = data["steps"]["argmax_canvas"]
    idx = np.frombuffer(base64.b64decode(arr["b64"]), dtype="<u2").reshape(arr["shape"])
    printed = [line.split("   ")[-1].strip() for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    tok = load_tokenizer("addition-diffusion")
    assert len(printed) == idx.shape[0]
    for s, line in enumerate(printed):  # the trace prints the argmax canvas through show_tokens
        ids = tok.convert_tokens_to_ids([data["strings"][i] for i in idx[s]])
        assert show_tokens(ids, accepted=[int(c) for c in base64.b64decode(data["steps"]["accepted"]["b64"])[
            s * idx.shape[1]:(s + 1) * idx.shape[1]]]).strip() == line


@pytest.mark.skipif("addition-diffusion" not in zoo.names(), reason="zoo model not shipped")
def test_demo_runs_the_flagship_study_and_says_where_the_report_is(tmp_path, capsys):
    assert main(["demo", "-n", "1", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "addition" / "report.md"
    assert f"Report: {report}" in out and report.is_file()
    assert (tmp_path / "addition" / "report.json").is_file()

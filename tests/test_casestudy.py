"""Case-study framework: causal models, IIA with known answers on a zoo model, reports, registry, CLI."""

from __future__ import annotations

import json
import math
import random

import pytest
from matplotlib.figure import Figure

from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis, PairRuns, interchange_accuracy, random_site_baseline, random_sites

from dgt_interp.studies import CaseStudy, Report, get_study, list_studies, register, run_study
from dgt_interp.cli import main
from dgt_interp.patching import Site
from dgt_interp.tasks import ADDITION, Problem

# a two-variable model: y = x + 1, answer = str(2 * y)
TOY = CausalModel(inputs=lambda p: {"x": int(p.prompt)}, variables={"y": lambda v: v["x"] + 1,
                                                                      "answer": lambda v: str(2 * v["y"])},
                  output="answer")


def test_causal_model_counterfactual():
    b, s = Problem("3", "8"), Problem("10", "22")
    assert TOY.run(b)["answer"] == "8"
    assert TOY.counterfactual(b, s, ["y"]) == "22" and TOY.counterfactual(b, s, ["x"]) == "22"
    assert TOY.counterfactual(b, s, []) == "8"
    with pytest.raises(CaseStudyError, match="unknown high-level variables"):
        TOY.counterfactual(b, s, ["nope"])
    h = Hypothesis("h", TOY, ("y",), lambda ctx: [], output_positions=(1,))
    assert h.matches("123", "923") and not h.matches("133", "123") and not h.matches("1", "12")


def test_report_write_atomic(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    r = Report("T", "body ![f](f.png)", {"f": fig}, {"x": float("nan"), "y": [1.0, float("inf")]})
    out = r.write(tmp_path / "rep")
    assert (out / "report.md").read_text().startswith("# T\n\nbody")
    assert (out / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text()) == {"x": None, "y": [1.0, None]}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


USER_STUDY = '''
from dgt_interp.studies import CaseStudy, Report, register
from dgt_interp.tasks import SORT

def run(ctx):
    return Report("user", f"quick={ctx.quick} models={sorted(ctx.models)}", {}, {"answer": 42})

register(CaseStudy("user-study-xyz", SORT, "a user study outside dgt_interp", run, models={"diffusion": "d"}))
'''


def test_registry_and_user_study(tmp_path):
    assert "addition" in [s.name for s in list_studies()]
    f = tmp_path / "mystudy.py"
    f.write_text(USER_STUDY)
    st = get_study(str(f))
    assert st.name == "user-study-xyz" and get_study("user-study-xyz") is st
    rep = run_study("user-study-xyz", out=tmp_path / "o", quick=True, progress=False, models={"ar": "a"})
    assert rep.markdown == "quick=True models=['ar', 'diffusion']"
    assert json.loads((tmp_path / "o" / "report.json").read_text())["answer"] == 42
    with pytest.raises(CaseStudyError, match="unknown case study 'nope'"):
        get_study("nope")
    with pytest.raises(CaseStudyError, match="CaseStudy"):
        register("not a study")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(CaseStudyError, match="registered no case study"):
        get_study(str(empty))


def test_cli(tmp_path, capsys):
    assert main(["case-study", "list"]) == 0
    assert "addition" in capsys.readouterr().out
    assert main(["case-study", "run", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown case study") and err.count("\n") == 1
    f = tmp_path / "s.py"
    f.write_text(USER_STUDY)
    assert main(["case-study", "run", str(f), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert (tmp_path / "r" / "report.md").is_file()


def test_iia_known_answers(addition_diffusion):
    """The last layer's residual at digit j's position, patched at every step, fixes that digit: the
    carry hypothesis scored on digit j must be 1.0 there; patched at step 0 only it is undone by the
    later steps (the base answer comes back): 0.0. Random sites: the requested number of draws."""
    from case_studies.addition.hypothesis import ADDITION_MODEL, answer_position, carry_pairs

    pos = answer_position(2)
    every = Hypothesis("c2@L3", ADDITION_MODEL, ("c2",), lambda ctx: [Site("blocks.3.hook_resid_post", None, pos)],
                       output_positions=(pos,))
    first = Hypothesis("c2@L3,s0", ADDITION_MODEL, ("c2",), lambda ctx: [Site("blocks.3.hook_resid_post", 0, pos)],
                       output_positions=(pos,))
    runs = PairRuns(addition_diffusion, carry_pairs(2, 3), seed=0)
    assert runs.ctx.kind == "diffusion" and runs.ctx.canvas_length == 8 and len(runs.pairs) + runs.dropped == 3
    r = interchange_accuracy(addition_diffusion, every, runs=runs)
    assert r.iia == 1.0 and r.n_informative == r.n == len(runs.pairs) and r.ci95[1] == 1.0
    assert interchange_accuracy(addition_diffusion, first, runs=runs).iia == 0.0
    base = random_site_baseline(addition_diffusion, first, runs=runs, draws=2)
    assert len(base.draws) == 2 and 0.0 <= base.mean_iia <= 1.0
    sites = random_sites(runs, first.sites(runs.ctx), random.Random(0))
    assert len(sites) == 1 and 0 <= sites[0].step < runs.ctx.n_steps and 0 <= sites[0].pos < 8
    assert not math.isnan(r.ci95[0])


def test_study_fields():
    st = get_study("addition")
    assert st.task is ADDITION and st.models == {"diffusion": "addition-diffusion", "ar": "addition-ar"}
    assert isinstance(st, CaseStudy) and len(st.hypotheses) == 15

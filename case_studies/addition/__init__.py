"""Case study `addition`: carry computation and the order in which digits commit (zoo addition models).

`hypothesis.py` holds the hypothesis as code (schoolbook addition as a `CausalModel`, carries aligned to
sites); `study.py` holds `compute(ctx)` and `run(ctx) -> Report`; `report.py` holds `render(numbers)`
(the text, re-rendered from report.json by `dgt_interp.studies.rerender`). Run it with `dgt-interp
case-study run addition`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import ADDITION

from .hypothesis import ADDITION_MODEL, carry_at, carry_pairs, sample_problem
from .report import TITLE, render
from .study import run

STUDY = register(CaseStudy(
    name="addition",
    task=ADDITION,
    description="carry computation and digit commit order on 4-digit addition (IIA of carry sites, phenomena "
                "across sampler settings, AR twin baseline)",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "addition-diffusion", "ar": "addition-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
    hypotheses=tuple(carry_at(j, layer) for j in (1, 2, 3) for layer in (0, 1, 2, 3, None)),
))

__all__ = ["STUDY", "ADDITION_MODEL", "carry_at", "carry_pairs", "sample_problem", "run"]

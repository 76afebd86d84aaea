"""Case study `sort`: which algorithm sorts digits, where it lives, and in what order digits commit.

`hypothesis.py` holds the hypotheses as code (the rank algorithm: counts -> cumulative counts -> order
statistics; the successor algorithm: each digit from the one before), aligned to sites; `study.py` holds
`compute(ctx)` and `run(ctx) -> Report`; `report.py` holds `render(numbers)` (the text, re-rendered from
report.json by `dgt_interp.studies.rerender`). Run it with `dgt-interp case-study run sort`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import SORT

from .hypothesis import (
    RANK_MODEL,
    SUCCESSOR_MODEL,
    order_pairs,
    order_stat_at,
    previous_token_at,
    previous_token_pairs,
    sample_problem,
    successor,
)
from .report import TITLE, render
from .study import run, sampler_settings

STUDY = register(CaseStudy(
    name="sort",
    task=SORT,
    description="rank vs successor sorting: IIA of order statistics per layer/step/self-conditioning, a "
                "previous-token test, phenomena across sampler settings, AR twin baseline",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "sort-diffusion", "ar": "sort-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
    hypotheses=tuple(order_stat_at(i, w, s) for i in (0, 2, 4) for w, s in
                     [(layer, "all") for layer in range(4)] + [("selfcond", "all"), ("canvas", "all")])
    + tuple(previous_token_at(i) for i in (1, 3)),
))

__all__ = ["STUDY", "RANK_MODEL", "SUCCESSOR_MODEL", "order_pairs", "order_stat_at", "previous_token_at",
           "previous_token_pairs", "sample_problem", "successor", "run", "sampler_settings"]

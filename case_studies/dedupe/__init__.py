"""Case study `dedupe`: do tokens and whole sequences smear across positions, and what places a token?

The dedupe task's answer (`31337254=` -> `317254`) puts each distinct digit at the number of distinct
digits before its first occurrence: a shallow model cannot know a token's position in one pass.
`hypothesis.py` holds the hypotheses as code (the scan model: each digit follows from where its drafted
left neighbour first occurs; the independent model); `study.py` holds `compute(ctx)` and `run(ctx) ->
Report`; `report.py` holds `render(numbers)` (the text, re-rendered from report.json by
`dgt_interp.studies.rerender`). Run it with `dgt-interp case-study run dedupe`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import DEDUPE

from .hypothesis import MODELS, dedupe_pairs, digit_at
from .report import MODELS_SCORED, TITLE, render
from .study import run

STUDY = register(CaseStudy(
    name="dedupe",
    task=DEDUPE,
    description="token and sequence smearing on the dedupe task (vs the AR twin and a random-order baseline), "
                "canvas patches of drafted tokens on their neighbours, IIA of the scan vs independent model",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "dedupe-diffusion", "ar": "dedupe-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
    hypotheses=tuple(digit_at(w, m) for w in (0, 1, "selfcond", "canvas") for m in MODELS_SCORED),
))

__all__ = ["STUDY", "MODELS", "dedupe_pairs", "digit_at", "run"]

"""Case study `smearing`: do list tokens smear across positions, and does the count decide where they land?

The count task's answer length varies with the count (`3:753`), so positions are uncertain while the
canvas is denoised. `hypothesis.py` holds the hypotheses as code (the count aligned to the count
position, three models of how it places the list); `study.py` holds `compute(ctx)` and `run(ctx) ->
Report`; `report.py` holds `render(numbers)` (the text, re-rendered from report.json by
`dgt_interp.studies.rerender`). Run it with `dgt-interp case-study run smearing`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import COUNT

from .hypothesis import MODELS, count_at, smearing_pairs
from .report import COMBOS, TITLE, render
from .study import run

STUDY = register(CaseStudy(
    name="smearing",
    task=COUNT,
    description="token/sequence smearing on the count task and whether the count decides where the list lands "
                "(IIA of count sites under three layout models, sampler settings, AR twin baseline)",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "count-diffusion", "ar": "count-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
    hypotheses=tuple(count_at(w, m, c) for w in (0, 1, 2, 3, "selfcond", "canvas") for m, c in COMBOS),
))

__all__ = ["STUDY", "COMBOS", "MODELS", "count_at", "smearing_pairs", "run"]

"""Case study `intermediate_context`: does the diffusion model draft the list and read the count off it?

The count task writes the count first (`3:753`) although it depends on the list written after it.
`hypothesis.py` holds the hypothesis as code (count := len(drafted list), the list aligned to the list
positions' canvas tokens / self-conditioning logits); `study.py` holds `compute(ctx)` and `run(ctx) ->
Report`; `report.py` holds `render(numbers)` (the text, re-rendered from report.json by
`dgt_interp.studies.rerender`). Run it with `dgt-interp case-study run intermediate_context`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import COUNT

from .hypothesis import CHANNELS, STEPS, context_pairs, count_draft_at, list_at
from .report import TITLE, render
from .study import run

STUDY = register(CaseStudy(
    name="intermediate_context",
    task=COUNT,
    description="intermediate-context reasoning on the count task: wrong counts drafted and corrected, causal effect "
                "of drafted list tokens on the count, IIA of count := len(drafted list), AR twin baseline",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "count-diffusion", "ar": "count-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
    hypotheses=tuple(list_at(ch, st, c) for ch in CHANNELS for st in STEPS for c in ("count", "answer"))
    + tuple(count_draft_at("both", c) for c in ("count", "answer")),
))

__all__ = ["STUDY", "CHANNELS", "STEPS", "context_pairs", "count_draft_at", "list_at", "run"]

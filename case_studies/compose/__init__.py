"""Case study `compose`: does the diffusion model apply a chain of maps right to left over its denoising steps,
reading its own drafts, and correct a digit written from a wrong draft?

The compose task asks for the states of a digit under ten maps applied from the right (`+#+++##+>?3=` ->
`6554320216`): the rightmost digit is one map from the start digit, each one to its left one map from its
right neighbour, the leftmost all ten. The maps generate a non-solvable group and 4^10 sequences cannot be
memorised, so a 2-layer model cannot compose ten of them in one pass: it must draft the right end first and compute leftwards from its drafts: non-chronological order, intermediate-context reasoning, and retroactive self-correction when
a draft it read turns out wrong. `hypothesis.py` holds the hypothesis as code; `study.py` holds `compute(ctx)`
and `run(ctx) -> Report`; `report.py` holds `render(numbers)`. Run it with `dgt-interp case-study run compose`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import COMPOSE

from .hypothesis import CHANNELS, COMPARES, HEADLINE_LINK, N, STEPS, COMPOSE_MODEL, link_at, compose_pairs
from .report import TITLE, render
from .study import hypotheses, run

STUDY = register(CaseStudy(
    name="compose",
    task=COMPOSE,
    description="non-chronological and intermediate-context reasoning and retroactive self-correction on maps "
                "composed from the right: commit order vs a random order and the AR twin, canvas patching by neighbour, "
                "IIA of the digits left of the drafted suffix c6..c9 with random sites",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "compose-diffusion", "ar": "compose-ar"},
    viewer=True,
    hypotheses=tuple(hypotheses()),
))

__all__ = ["STUDY", "CHANNELS", "COMPARES", "HEADLINE_LINK", "N", "STEPS", "COMPOSE_MODEL", "link_at", "compose_pairs",
           "run"]

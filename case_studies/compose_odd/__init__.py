"""Case study `compose_odd`: does a list whose place in the canvas is computed last smear across positions?

The compose_odd task writes the compose task's ten states, then the odd ones in order (`+#+++##+>?3=` ->
`6554320216:5531`). A 2-layer DiffusionGemma composes the maps right to left over its steps, so the list's last
digits are known before the odd states to their left, which decide where they go: token smearing (their
probability spread over neighbouring positions) and sequence smearing (the list drafted at a shift) should
appear, and the list should move when a drafted state changes parity. `hypothesis.py` holds the layout and
causal model; `study.py` holds `compute(ctx)` and `run(ctx) -> Report`; `report.py` holds `render(numbers)`.
Run it with `dgt-interp case-study run compose_odd`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import COMPOSE_ODD

from .hypothesis import COMPOSE_ODD_MODEL, LIST_START, list_offset, odd_list
from .report import TITLE, render
from .study import hypotheses, list_shift, run

STUDY = register(CaseStudy(
    name="compose_odd",
    task=COMPOSE_ODD,
    description="token and sequence smearing of a list whose place is computed last (vs the AR twin and a "
                "random-order baseline), whether the list moves when a drafted state changes parity, IIA of the "
                "drafted state c6",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "compose_odd-diffusion", "ar": "compose_odd-ar"},
    viewer=True,
    hypotheses=tuple(hypotheses()),
))

__all__ = ["STUDY", "COMPOSE_ODD_MODEL", "LIST_START", "list_offset", "list_shift", "odd_list", "run"]

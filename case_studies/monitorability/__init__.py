"""Case study `monitorability`: is what DiffusionGemma writes as useful to a monitor as its AR twin's?

`views.py` holds the runs, the causal labels (did the hint change the answer; was a correct hint's
answer copied or computed), the views and the monitors' rules and features; `study.py` holds
`compute(ctx)` and `run(ctx) -> Report`; `report.py` holds `render(numbers)`. The scores come from
`dgt_interp.monitor` (g-mean², intervals, the monitor interface). Run it with `dgt-interp case-study
run monitorability`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import HINTED_ADDITION

from .report import TITLE, render
from .study import run
from .views import MONITORS, register_monitor

STUDY = register(CaseStudy(
    name="monitorability",
    task=HINTED_ADDITION,
    description="g-mean² of monitors reading the final answer, the worked answer, the intermediate canvases and "
                "the self-conditioning tokens, DiffusionGemma vs its AR twin, on hinted addition (intervention and "
                "process labels, both causal)",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "hinted_addition-diffusion", "ar": "hinted_addition-ar"},
    viewer=True,
))

__all__ = ["STUDY", "run", "MONITORS", "register_monitor"]

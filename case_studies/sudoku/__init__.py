"""Case study `sudoku`: does DiffusionGemma fill a 4x4 sudoku in constraint-propagation order?

`hypothesis.py` holds the algorithm as code (propagation by naked and hidden singles, and the round at
which it fills each cell); `study.py` holds `compute(ctx)` and `run(ctx) -> Report`; `report.py` holds
`render(numbers)` (the text, re-rendered from report.json by `dgt_interp.studies.rerender`). Run it
with `dgt-interp case-study run sudoku`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import SUDOKU

from .hypothesis import candidates, forced_cells, propagate, propagation_rounds
from .report import TITLE, render
from .study import easy_hard_flips, multi_round_puzzles, order_vs_rounds, run, sampler_settings

STUDY = register(CaseStudy(
    name="sudoku",
    task=SUDOKU,
    description="commit order of 4x4 sudoku cells against constraint-propagation rounds (non-chronological "
                "reasoning predicted cell by cell), and whether easy cells' early digits feed harder ones",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "sudoku-diffusion", "ar": "sudoku-ar"},
    viewer=True,  # report.md links the viewer page of one example run (viewer.html)
))

__all__ = ["STUDY", "candidates", "forced_cells", "propagate", "propagation_rounds", "easy_hard_flips",
           "multi_round_puzzles", "order_vs_rounds", "run", "sampler_settings"]

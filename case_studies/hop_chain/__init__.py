"""Case study `hop_chain`: does the diffusion model chase pointers right to left over its denoising steps?

The hop_chain task asks for three hops of a written permutation, the last hop first (`f(f(f(x))) f(f(x))
f(x)`). A 2-layer model can do one lookup per forward pass, so it must draft f(x) (the rightmost digit)
first and compute each hop to its left from the drafted one: non-chronological order and
intermediate-context reasoning. `hypothesis.py` holds the hypothesis as code; `study.py` holds
`compute(ctx)` and `run(ctx) -> Report`; `report.py` holds `render(numbers)`. Run it with
`dgt-interp case-study run hop_chain`.
"""

from dgt_interp.studies import CaseStudy, register
from dgt_interp.tasks import HOP_CHAIN

from .hypothesis import CHANNELS, COMPARES, HOP_MODEL, STEPS, h1_at, hop_pairs
from .report import TITLE, render
from .study import run

STUDY = register(CaseStudy(
    name="hop_chain",
    task=HOP_CHAIN,
    description="non-chronological and intermediate-context reasoning on 3-hop pointer chasing answered last hop "
                "first: commit order vs a random order and the AR twin, step-0 argmax per hop, IIA of h2 := "
                "f(drafted h1) with position controls and random sites",
    run=run,
    render=render,
    title=TITLE,
    models={"diffusion": "hop_chain-diffusion", "ar": "hop_chain-ar"},
    viewer=True,
    hypotheses=tuple(h1_at(ch, st, 2, c) for ch in CHANNELS for st in STEPS for c in COMPARES),
))

__all__ = ["STUDY", "CHANNELS", "COMPARES", "HOP_MODEL", "STEPS", "h1_at", "hop_pairs", "run"]

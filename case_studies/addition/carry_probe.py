"""The packaged probing example: a linear probe for the carry bit of the addition model.

The carry into column j (`c{j}` of `ADDITION_MODEL`) is probed from the residual stream after each
block at the canvas position of answer digit j-1 (the lower digit, where column j-1 is summed; the
patching and IIA results of this study locate it there), over every denoising step, with a held-out
split and a control task whose types are column j-1's operand digits (Hewitt & Liang 2019).

    >>> from dgt_interp.models import load_model
    >>> res = carry_probe(load_model("addition-diffusion"), j=2, n=512)
    >>> res.accuracy[-1]      # [layer] held-out accuracy at the last recorded step
"""

from __future__ import annotations

import random

from dgt_interp import capture
from dgt_interp.probing import ProbeResult, linear_probe
from dgt_interp.tokenizer import load_tokenizer, prompt_batch

from .hypothesis import ADDITION_MODEL, answer_position, sample_problem


def carry_probe(model, *, j: int = 2, n: int = 512, seed: int = 0, kind: str = "logistic",
                name: str = "blocks.*.hook_resid_post") -> ProbeResult:
    """Probe `c{j}` (j = 1..3) at answer digit j-1's canvas position over (step, layer) on `n` problems."""
    if j not in (1, 2, 3):
        raise ValueError(f"j={j!r}: the carry into column 1, 2 or 3")
    rng = random.Random(f"carry-probe:{seed}")
    problems = [sample_problem(rng) for _ in range(n)]
    values = [ADDITION_MODEL.run(p) for p in problems]
    labels = [v[f"c{j}"] for v in values]
    types = [(v[f"a{j - 1}"], v[f"b{j - 1}"]) for v in values]
    batch = prompt_batch([p.prompt for p in problems], load_tokenizer(model))
    pos = answer_position(j - 1)
    traj = capture(model, batch["input_ids"], attention_mask=batch["attention_mask"], seed=seed, names=name,
                   positions=[pos])
    return linear_probe(traj, labels, position=pos, name=name, types=types, kind=kind, seed=seed)

"""The packaged probing example: a linear probe for the carry bit of the addition model.

The carry into column j (`c{j}` of `ADDITION_MODEL`) is probed from the residual stream after each
block at the canvas position of answer digit j-1 (the lower digit, where column j-1 is summed; the
patching and IIA results of this study locate it there), over every denoising step, with a held-out
split and a control task whose types are column j-1's operand digits (Hewitt & Liang 2019).

    >>> from dgt_interp.models import load_model
    >>> res = carry_probe(load_model("addition-diffusion"), j=2, n=512)
    >>> res.accuracy[-1]      # [layer] held-out accuracy at the last recorded step

`register_carry_probe(j)` puts the same probe in the probe registry (`register_linear_probe`), so
`detect_phenomena` on addition problems, and every study run on them, reports it beside the built-in
probes (it is left out on other tasks' problems).
"""

from __future__ import annotations

import random

import re

from dgt_interp import capture
from dgt_interp.phenomena import Probe, register_linear_probe
from dgt_interp.probing import ProbeError, ProbeResult, linear_probe
from dgt_interp.tokenizer import load_tokenizer, prompt_batch

from .hypothesis import ADDITION_MODEL, N_DIGITS, answer_position, sample_problem

_PROMPT = re.compile(rf"\d{{{N_DIGITS}}}\+\d{{{N_DIGITS}}}=")


def _values(problem) -> dict | None:
    """The causal model's variables of an addition problem of this study's layout (None for any other)."""
    if not _PROMPT.fullmatch(problem.prompt) or len(problem.answer) != N_DIGITS:
        return None
    return ADDITION_MODEL.run(problem)


def _check_j(j) -> None:
    if j not in (1, 2, 3):
        raise ProbeError(f"j={j!r}: the carry into column 1, 2 or 3")


def register_carry_probe(j: int = 2, *, name: str | None = None, kind: str = "logistic",
                         hook: str = "blocks.*.hook_resid_post") -> Probe:
    """Register the carry probe of `c{j}` as `carry_c{j}` (or `name`) in the probe registry; returns the `Probe`."""
    _check_j(j)

    def label(p):
        v = _values(p)
        return None if v is None else v[f"c{j}"]

    def types(p):
        v = _values(p)
        return (v[f"a{j - 1}"], v[f"b{j - 1}"])

    return register_linear_probe(name or f"carry_c{j}", label=label, position=answer_position(j - 1), types=types,
                                 hook=hook, kind=kind,
                                 description=f"linear probe of the carry into column {j} at answer digit {j - 1}")


def carry_probe(model, *, j: int = 2, n: int = 512, seed: int = 0, kind: str = "logistic",
                name: str = "blocks.*.hook_resid_post") -> ProbeResult:
    """Probe `c{j}` (j = 1..3) at answer digit j-1's canvas position over (step, layer) on `n` problems."""
    _check_j(j)
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

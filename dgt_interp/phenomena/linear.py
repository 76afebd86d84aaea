"""Linear probes in the probe registry: `register_linear_probe` turns `probing.linear_probe` (one
probe per recorded step × layer, held-out split, control task) into a registered probe.

A linear probe needs more than a trajectory: labels, a position and (for the control task) types per
prompt, and the activations it reads. They come from the task's problems, through functions of one
`Problem`, and the hook it reads is declared in `records`, so `detect_phenomena` records it and passes
`problems=`; the result then sits beside the built-in probes in every study's tables:

    >>> register_linear_probe("carry_c2", label=lambda p: carry(p, 2), position=2,
    ...                       types=lambda p: column_digits(p, 1))
    >>> traj, res = detect_phenomena(model, problems)   # res["carry_c2"]: a probing.ProbeResult

`label(problem)` returns a class id, or None for a problem the probe does not apply to (another
task's): then the probe is left out of that run.
"""

from __future__ import annotations

from typing import Callable

import torch

from dgt_interp.phenomena.registry import Probe, get_probe, register_probe
from dgt_interp.probing import KINDS, ProbeError, linear_probe


def register_linear_probe(name: str, *, label: Callable, position: int | Callable,
                          types: Callable | None = None, hook: str = "blocks.*.hook_resid_post",
                          kind: str = "logistic", train_frac: float = 0.5, seed: int = 0, l2: float = 1e-2,
                          description: str = "") -> Probe:
    """Register a linear probe over (step, layer) of `hook` (a glob with `*` for the layer) under `name`.

    `label(problem) -> int | None` (class id; None: not applicable), `position` (a canvas position, or
    `position(problem) -> int`), `types(problem) -> hashable` (the control task's types; None: no
    control, selectivity NaN). The rest as in `probing.linear_probe`. Returns the registered `Probe`
    (`needs=("problems",)`, `records=(hook,)`).
    """
    if kind not in KINDS:
        raise ProbeError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}")
    if not callable(label):
        raise ProbeError(f"label must be a function of one Problem returning a class id, got {type(label).__name__}")

    def fn(traj, *, eos_id=None, problems):
        labels = [label(p) for p in problems]
        if any(v is None for v in labels):
            return None
        pos = torch.tensor([position(p) if callable(position) else position for p in problems])
        kinds = [types(p) for p in problems] if types is not None else None
        return linear_probe(traj, labels, position=pos, name=hook, types=kinds, kind=kind, train_frac=train_frac,
                            seed=seed, l2=l2)

    register_probe(name, fn, description=description or f"{kind} probe of {hook} over (step, layer)",
                   needs=("problems",), records=(hook,))
    return get_probe(name)


__all__ = ["register_linear_probe"]

"""The probe registry: a probe is a function of a `Trajectory` returning a result with `to_dict()`
and `figure()`. Registered probes run in `detect_phenomena` and appear in every study's phenomena
tables, with no edit to either.

    >>> from dgt_interp.phenomena import register_probe
    >>> @register_probe("late_flips", description="positions still changing in the last two steps")
    ... def late_flips(traj, *, eos_id=None):
    ...     return MyResult(...)            # anything with .to_dict() and .figure()

`to_dict()` is what reports store (JSON); a `"summary"` entry (a number or short string), if
present, is the probe's cell in the study tables (else its first scalar entries are shown).

A probe that needs more than the trajectory declares it: `needs=("problems",)` (inputs passed by
keyword: `detect_phenomena` passes `problems=` when its prompts are a task's `Problem`s) and
`records=("blocks.*.hook_resid_post",)` (activations `detect_phenomena` then records). `run_probes`
runs a probe only when every input it needs is given, and leaves out a probe that returns None (not
applicable to these inputs, e.g. another task's problems). Linear probes over (step, layer) register
this way: `register_linear_probe` (`dgt_interp.phenomena.linear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from dgt_interp.phenomena.base import PhenomenaError


@runtime_checkable
class ProbeResult(Protocol):
    """What a probe returns: numbers for JSON and a matplotlib figure."""

    def to_dict(self) -> dict: ...

    def figure(self, title: str = ""): ...


@dataclass(frozen=True)
class Probe:
    """A registered probe: `fn(traj, *, eos_id=None, **{need: value}) -> ProbeResult | None`.

    `needs`: names of the keyword inputs it takes beyond the trajectory (e.g. `"problems"`);
    `records`: hook names / globs the trajectory must hold (what `detect_phenomena` captures)."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    builtin: bool = False
    needs: tuple[str, ...] = ()
    records: tuple[str, ...] = ()

    def __call__(self, traj, *, eos_id: int | None = None, **inputs):
        missing = [k for k in self.needs if inputs.get(k) is None]
        if missing:
            raise PhenomenaError(f"probe {self.name!r} needs {', '.join(missing)}: pass {missing[0]}=...")
        return self.fn(traj, eos_id=eos_id, **{k: inputs[k] for k in self.needs})


_PROBES: dict[str, Probe] = {}


def register_probe(name: str, fn: Callable | None = None, *, description: str = "", builtin: bool = False,
                   needs: tuple[str, ...] = (), records: tuple[str, ...] = ()):
    """Register `fn(traj, *, eos_id=None, **needs) -> result` under `name` (usable as a decorator); returns `fn`.

    `needs`: keyword inputs beyond the trajectory (e.g. `("problems",)`); `records`: hook names the
    trajectory must hold. See the module docstring."""
    if not isinstance(name, str) or not name or name == "accuracy":
        raise PhenomenaError(f"probe name {name!r} must be a non-empty string other than 'accuracy'")
    needs, records = (needs,) if isinstance(needs, str) else tuple(needs), \
        (records,) if isinstance(records, str) else tuple(records)
    bad = [k for k in needs if not isinstance(k, str) or not k.isidentifier() or k in ("traj", "eos_id")]
    if bad:
        raise PhenomenaError(f"probe {name!r}: needs={bad[0]!r} must name a keyword input other than traj / eos_id")

    def add(f):
        if not callable(f):
            raise PhenomenaError(f"probe {name!r} must be a function of a Trajectory, got {type(f).__name__}")
        _PROBES[name] = Probe(name, f, description, builtin, needs, records)
        return f

    return add if fn is None else add(fn)


def unregister_probe(name: str) -> None:
    """Remove a registered probe (one-line error if unknown)."""
    if name not in _PROBES:
        raise PhenomenaError(f"no probe named {name!r}; registered: {', '.join(_PROBES)}")
    del _PROBES[name]


def probes() -> list[Probe]:
    """Registered probes, built-ins first, in registration order."""
    return list(_PROBES.values())


def get_probe(name: str) -> Probe:
    """The registered probe `name` (one-line error if unknown)."""
    if name not in _PROBES:
        raise PhenomenaError(f"no probe named {name!r}; registered: {', '.join(_PROBES)}")
    return _PROBES[name]


def recorded_names() -> list[str]:
    """The hook names the registered probes need recorded (`Probe.records`), in order, once each."""
    return list(dict.fromkeys(n for p in _PROBES.values() for n in p.records))


def builtin_probe_names() -> list[str]:
    return [p.name for p in _PROBES.values() if p.builtin]


def run_probes(traj, *, eos_id: int | None = None, **inputs) -> dict[str, Any]:
    """Every registered probe's result on `traj`, by name: those whose `needs` are all in `inputs` (not
    None); a probe that returns None (not applicable to these inputs) is left out."""
    out = {}
    for p in probes():
        if all(inputs.get(k) is not None for k in p.needs):
            res = p(traj, eos_id=eos_id, **inputs)
            if res is not None:
                out[p.name] = res
    return out


def extra_probe_results(results: dict) -> dict[str, dict]:
    """`{name: result.to_dict()}` of the registered probes that are not built in, from a results dict
    (`detect_phenomena`'s): what a study stores so its tables can show probes it does not know."""
    builtin = set(builtin_probe_names())
    return {p.name: results[p.name].to_dict() for p in probes() if p.name not in builtin and p.name in results}


def _cell(d) -> str:
    if not isinstance(d, dict):
        return str(d)
    if "summary" in d:
        v = d["summary"]
        return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else str(v)
    scalars = [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None][:3]
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars)


def extra_probe_table(per_row: dict[str, dict]) -> str:
    """A markdown table of the probes a study does not report itself, from stored numbers.

    `per_row`: {row label: {probe name: result dict (`to_dict()`), ...}} as studies keep them in
    `report.json` (`extra_probe_results`); one column per probe name present that is not built in
    (nor `accuracy`). Empty string when there is none (so reports without extra probes are unchanged).
    """
    skip = {"accuracy", *builtin_probe_names()}
    names: list[str] = []
    for res in per_row.values():
        names += [n for n in res if n not in skip and n not in names and isinstance(res[n], dict)]
    if not names:
        return ""
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, res in per_row.items():
        lines.append(f"| {label} | " + " | ".join(_cell(res.get(n, "–")) for n in names) + " |")
    return "\n".join(lines)


__all__ = ["ProbeResult", "Probe", "register_probe", "unregister_probe", "probes", "get_probe", "recorded_names",
           "builtin_probe_names", "run_probes",
           "extra_probe_results", "extra_probe_table"]

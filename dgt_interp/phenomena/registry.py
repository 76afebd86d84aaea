"""The probe registry: a probe is a function of a `Trajectory` returning a result with `to_dict()`
and `figure()`. Registered probes run in `detect_phenomena` and appear in every study's phenomena
tables, with no edit to either.

    >>> from dgt_interp.phenomena import register_probe
    >>> @register_probe("late_flips", description="positions still changing in the last two steps")
    ... def late_flips(traj, *, eos_id=None):
    ...     return MyResult(...)            # anything with .to_dict() and .figure()

`to_dict()` is what reports store (JSON); a `"summary"` entry (a number or short string), if
present, is the probe's cell in the study tables (else its first scalar entries are shown).
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
    """A registered probe: `fn(traj, *, eos_id=None) -> ProbeResult`."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    builtin: bool = False

    def __call__(self, traj, *, eos_id: int | None = None):
        return self.fn(traj, eos_id=eos_id)


_PROBES: dict[str, Probe] = {}


def register_probe(name: str, fn: Callable | None = None, *, description: str = "", builtin: bool = False):
    """Register `fn(traj, *, eos_id=None) -> result` under `name` (usable as a decorator); returns `fn`."""
    if not isinstance(name, str) or not name or name == "accuracy":
        raise PhenomenaError(f"probe name {name!r} must be a non-empty string other than 'accuracy'")

    def add(f):
        if not callable(f):
            raise PhenomenaError(f"probe {name!r} must be a function of a Trajectory, got {type(f).__name__}")
        _PROBES[name] = Probe(name, f, description, builtin)
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


def builtin_probe_names() -> list[str]:
    return [p.name for p in _PROBES.values() if p.builtin]


def run_probes(traj, *, eos_id: int | None = None) -> dict[str, Any]:
    """Every registered probe's result on `traj`, by name."""
    return {p.name: p(traj, eos_id=eos_id) for p in probes()}


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


__all__ = ["ProbeResult", "Probe", "register_probe", "unregister_probe", "probes", "builtin_probe_names", "run_probes",
           "extra_probe_results", "extra_probe_table"]

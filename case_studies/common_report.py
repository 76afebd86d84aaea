"""Formatting helpers every case study's `report.py` shares (one copy each).

Renderers work on numbers as `report.json` holds them: `as_json(numbers)` gives that form from the
live numbers (NaN -> None, tuples -> lists, dict keys -> str), so `render` reads the same whether it
runs right after `compute` or later on a `report.json`. `num(x)` turns a None read back from JSON
into NaN again where the text formats a float that may have been NaN (f"{nan:.3f}" == "nan").
"""

from __future__ import annotations

import json
import math

from dgt_interp.phenomena import extra_probe_results, extra_probe_table
from dgt_interp.studies import jsonable


def as_json(numbers: dict) -> dict:
    """`numbers` as `report.json` stores them (a deep copy through JSON)."""
    return json.loads(json.dumps(jsonable(numbers)))


def num(x):
    """NaN for None (a NaN read back from JSON), else x."""
    return float("nan") if x is None else x


def isnan(x) -> bool:
    """None (NaN in JSON) or NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def nz(x) -> float:
    """-1 for NaN/None (for ranking candidates), else x."""
    return -1.0 if isnan(x) else x


def f3(x, nd: int = 3) -> str:
    """A number for a markdown table (n/a for None/NaN)."""
    return "n/a" if isnan(x) else f"{x:.{nd}f}"


def sci(x) -> str:
    """A number in scientific notation (n/a for None/NaN)."""
    return "n/a" if isnan(x) else f"{x:.1e}"


def slug(name: str) -> str:
    """A setting name as a file-name fragment."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def ci(r: dict) -> str:
    """A pooled rate with its 95% interval and counts: `{iia, ci95, correct, n}`."""
    return f"{f3(r['iia'])} [{f3(r['ci95'][0])}, {f3(r['ci95'][1])}] ({r['correct']}/{r['n']})"


def figure_links(names, prefixes) -> list[str]:
    """Markdown image links `![k](k.png)` for the figure names starting with one of `prefixes`."""
    return [f"![{k}]({k}.png)" for k in names if k.startswith(prefixes)]


def is_baseline(r: dict) -> bool:
    """A `BaselineResult.to_dict()` (random-site draws), not an `IIAResult.to_dict()`."""
    return "draws" in r


def iia_table(rows) -> str:
    """`dgt_interp.studies.iia_table` on dicts: rows of (label, `IIAResult.to_dict()` or
    `BaselineResult.to_dict()`), as live or read back from report.json; the same text."""
    lines = ["| hypothesis / baseline | model | IIA (informative pairs) | 95% CI | n | IIA (all pairs) | n |",
             "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        if is_baseline(r):
            draws = r["draws"]
            d = draws[0] if draws else None
            lines.append(f"| {label} (mean of {len(draws)} draws) | {d['kind'] if d else '?'} | "
                         f"{num(r['mean_iia_informative']):.3f} | min "
                         f"{min(num(x['iia_informative']) for x in draws):.3f} – "
                         f"max {max(num(x['iia_informative']) for x in draws):.3f} | "
                         f"{d['n_informative'] if d else 0} | {num(r['mean_iia']):.3f} | {d['n'] if d else 0} |")
        else:
            lo, hi = r["ci95_informative"]
            lines.append(f"| {label} | {r['kind']} | {num(r['iia_informative']):.3f} | {num(lo):.3f}–"
                         f"{num(hi):.3f} | {r['n_informative']} | {num(r['iia']):.3f} | {r['n']} |")
    return "\n".join(lines)


def collect_probes(numbers: dict, setting: str, results: dict) -> None:
    """Keep the results of registered probes the study does not report itself (`numbers["probes"]`,
    added only when there are any, so reports without them are unchanged)."""
    extra = extra_probe_results(results)
    if extra:
        numbers.setdefault("probes", {})[setting] = extra


def probe_section(numbers: dict) -> list[str]:
    """Report lines for the probes in `numbers["probes"]` (none: no lines)."""
    table = extra_probe_table(numbers.get("probes", {}))
    return ["", "Other registered probes (`dgt_interp.phenomena.register_probe`):", "", table] if table else []


__all__ = ["as_json", "num", "isnan", "nz", "f3", "sci", "slug", "ci", "figure_links", "is_baseline", "iia_table",
           "collect_probes", "probe_section"]

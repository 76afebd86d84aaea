"""Formatting helpers every case study's `report.py` shares (one copy each).

Renderers work on numbers as `report.json` holds them: `as_json(numbers)` gives that form from the
live numbers (NaN -> None, tuples -> lists, dict keys -> str), so `render` reads the same whether it
runs right after `compute` or later on a `report.json`. `num(x)` turns a None read back from JSON
into NaN again where the text formats a float that may have been NaN (f"{nan:.3f}" == "nan").
"""

from __future__ import annotations

import json
import math

from matplotlib.figure import Figure

from dgt_interp.phenomena import extra_probe_results, extra_probe_table
from dgt_interp.stats import wilson_interval
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


def iia_figure(rows, title: str) -> Figure:
    """Horizontal bars of IIA on informative pairs with 95% Wilson CIs, one row per hypothesis / baseline
    (random-site baselines: mean of the draws, grey; AR twin rows orange; DiffusionGemma blue). Rows are
    (label, `IIAResult` / `BaselineResult` or their `to_dict()`, live or from report.json)."""
    fig = Figure(figsize=(8.0, 1.2 + 0.24 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    vals, errs, labels = [], [], []
    for label, r in rows:
        r = r.to_dict() if hasattr(r, "to_dict") else r
        labels.append(label)
        if is_baseline(r):
            vals.append(num(r["mean_iia_informative"]))
            errs.append((0.0, 0.0))
        else:
            v, (lo, hi) = num(r["iia_informative"]), r["ci95_informative"]
            vals.append(v)
            errs.append((0.0, 0.0) if v != v else (max(v - num(lo), 0), max(num(hi) - v, 0)))
    y = list(range(len(vals)))
    ax.barh(y, [0 if v != v else v for v in vals], xerr=list(zip(*errs)) if errs else None, capsize=2,
            color=["tab:gray" if "random" in lab else "tab:orange" if "AR" in lab else "tab:blue" for lab in labels])
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("IIA (informative pairs)")
    ax.set_ylabel("hypothesis / baseline [setting]")
    ax.set_title(title, fontsize=9)
    return fig


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


def interval(est, ci95, nd: int = 2) -> str:
    """`est [lo, hi]`: an estimate with its 95% interval (n/a parts for None/NaN)."""
    lo, hi = ci95 if ci95 else (None, None)
    return f"{f3(est, nd)} [{f3(lo, nd)}, {f3(hi, nd)}]"


def interval_above(a: dict, b: dict, key: str) -> bool:
    """a's 95% interval for `key` (`a[key + "_ci95"]`) lies above b's."""
    lo, hi = a[f"{key}_ci95"][0], b[f"{key}_ci95"][1]
    return not isnan(lo) and not isnan(hi) and lo > hi


def side(ci95, null: float) -> str:
    """Where a 95% interval lies against `null`: "above", "below" or "spans" (also for a missing interval)."""
    if not ci95 or isnan(ci95[0]) or isnan(ci95[1]):
        return "spans"
    return "above" if ci95[0] > null else "below" if ci95[1] < null else "spans"


def rate(k: int, n: int) -> dict:
    """A count as `{rate, ci95 (Wilson), k, n}`."""
    return {"rate": k / n if n else float("nan"), "ci95": list(wilson_interval(k, n)), "k": k, "n": n}


def rate_text(r: dict) -> str:
    """A `rate()` dict as text: `rate [lo, hi] (k/n)`."""
    return f"{interval(r['rate'], r['ci95'], 3)} ({r['k']}/{r['n']})"


def verdict(ci95, null: float, *, above: str, below: str, n, what: str = "n", numbers: dict | None = None) -> str:
    """A claim conditioned on its interval: `above` if the 95% interval lies above `null`, `below` if below,
    else "inconclusive at this n" (with n and what the interval spans). With `numbers`, a claim names the n
    it rests on and in a quick run is marked as an indication only (`qualify`)."""
    where = side(ci95, null)
    if where == "spans":
        return f"inconclusive at this n ({what} = {n}: the 95% interval includes {null:g})"
    claim = above if where == "above" else below
    return claim if numbers is None else qualify(numbers, f"{n} {what}", claim)


def qualify(numbers: dict, n, text: str) -> str:
    """A conclusion with the n it rests on; in a quick run marked as an indication only."""
    return (f"indication only (quick run, n = {n}): {text}" if numbers.get("quick") else f"at n = {n}: {text}")


def best_iia_lines(numbers: dict) -> list[str]:
    """One finding line per model in `numbers["iia"]`: its best hypothesis on informative pairs, with the
    random-site baseline."""
    lines = []
    for name, e in numbers["iia"].items():
        if "hypotheses" not in e:
            continue
        h = e["hypotheses"]
        best = max(h, key=lambda k: (num(h[k]["iia_informative"]) if not isnan(h[k]["iia_informative"]) else -1))
        b = h[best]
        lines.append(f"- **IIA [{name}]**: best `{best}` {interval(b['iia_informative'], b['ci95_informative'], 3)} "
                     f"(n = {b['n_informative']} informative pairs); random sites "
                     f"{f3(e['random_sites']['mean_iia_informative'])}.")
    return lines


def interpretation_head(numbers: dict) -> list[str]:
    """The opening of a report's "What this run shows" section: every claim is conditioned on its 95%
    interval (bootstrap for correlations, Wilson for rates); a quick run adds that its n supports none."""
    lines = ["## What this run shows", "",
             "Written from this run's numbers: each claim holds only if its 95% interval (bootstrap for mean "
             "correlations, Wilson for rates) lies on one side of the null; otherwise it says \"inconclusive at "
             "this n\"."]
    if numbers.get("quick"):
        lines += ["", "*Quick run: the n below are smoke-test sizes; read every statement as an indication "
                      "of what the full run tests, not as a result.*"]
    return lines + [""]


__all__ = ["best_iia_lines", "interval", "interval_above", "side", "rate", "verdict", "qualify", "interpretation_head", "as_json", "num", "isnan", "nz", "f3", "sci", "slug", "ci", "figure_links", "is_baseline", "iia_figure",
           "collect_probes", "probe_section"]

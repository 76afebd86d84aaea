"""Algorithmic transparency across the packaged studies: the best IIA at an intermediate site, per model.

The paper claims algorithmic transparency is harder for diffusion. Each study scores its hypotheses
by interchange-intervention accuracy (IIA, `dgt_interp.causal`); this module reads every published
study's `report.json` and, per study and model kind, keeps the best IIA on informative pairs among the
results whose every site is *intermediate*: a residual stream before the last layer, or the
self-conditioning channel. The last layer is left out because any variable that determines the
answer scores there; the canvas tokens (`hook_embed`) are left out because they are the answer being
written. Results on a study's selection half (paths with "selection") are left out too, so the best
is taken over held-out scores only; taking a maximum still favours the model with more candidates.
Next to it, the mean IIA of the random-site baselines the study drew for that model.

    python -m case_studies.transparency docs     # rewrite the table in docs/case_studies.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from case_studies.common_report import f3, isnan, num

BEGIN, END = "<!-- transparency-table -->", "<!-- /transparency-table -->"
MIN_INFORMATIVE = 10  # a best-of over results with fewer informative pairs would reward noise


def _walk(obj, path=()):
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (str(i),))


def iia_results(numbers: dict) -> list[dict]:
    """Every IIA result (an `IIAResult.to_dict()`) in a report's numbers, deduplicated, outside selection halves
    and outside random-site baselines (their draws are the baseline, not a hypothesis)."""
    seen, out = set(), []
    for path, d in _walk(numbers):
        if {"iia_informative", "ci95_informative", "n_informative", "sites", "kind"} <= set(d) and \
                not any("selection" in p or p == "draws" for p in path):
            key = (d["name"], d["kind"], tuple(d["sites"]), d["n"], d["correct"])
            if key not in seen:
                seen.add(key)
                out.append(d)
    return out


def baselines(numbers: dict) -> list[dict]:
    """Every random-site baseline (a `BaselineResult.to_dict()`: draws of IIA results) in a report."""
    out = []
    for path, d in _walk(numbers):
        if "draws" in d and "mean_iia_informative" in d and d["draws"] and not any("selection" in p for p in path):
            out.append(d)
    return out


def is_intermediate(sites: list[str], n_layers: int) -> bool:
    """Every site is a block before the last layer or the self-conditioning channel."""
    for s in sites:
        m = re.match(r"blocks\.(\d+)\.", s)
        if m:
            if int(m.group(1)) >= n_layers - 1:
                return False
        elif not s.startswith("self_cond."):
            return False
    return bool(sites)


def _layers(model_name: str) -> int:
    from transformers import AutoConfig

    from dgt_interp import zoo

    return AutoConfig.from_pretrained(zoo.resolve(model_name)).get_text_config().num_hidden_layers


def rows(docs_dir: str | Path) -> list[dict]:
    """One row per (study, model kind) with IIA results: best intermediate IIA and the baseline mean."""
    out = []
    for report in sorted(Path(docs_dir, "img").glob("study_*/report.json")):
        numbers = json.loads(report.read_text())
        results, base = iia_results(numbers), baselines(numbers)
        if not results:
            continue
        study = report.parent.name.removeprefix("study_")
        for kind in ("diffusion", "ar"):
            model = numbers.get("models", {}).get(kind)
            mine = [r for r in results if r["kind"] == kind]
            if model is None or not mine:
                out.append({"study": study, "kind": kind, "model": model, "best": None, "baseline": None})
                continue
            layers = _layers(model)
            eligible = [r for r in mine if is_intermediate(r["sites"], layers) and r["n_informative"] >= MIN_INFORMATIVE]
            best = max(eligible, key=lambda r: (num(r["iia_informative"]), num(r["ci95_informative"][0])),
                       default=None)
            means = [num(b["mean_iia_informative"]) for b in base if b["draws"][0].get("kind") == kind]
            means = [m for m in means if not isnan(m)]
            out.append({"study": study, "kind": kind, "model": model, "best": best, "n_candidates": len(eligible),
                        "baseline": sum(means) / len(means) if means else None})
    return out


def table(docs_dir: str | Path) -> str:
    """The markdown table of `rows(docs_dir)`."""
    lines = ["| study | model | best intermediate-site IIA (informative pairs) [95% CI] | hypothesis @ sites | "
             "n informative | candidates | random-site baseline (mean IIA) |", "|---|---|---|---|---|---|---|"]
    for r in rows(docs_dir):
        name = "DiffusionGemma" if r["kind"] == "diffusion" else "AR twin"
        model = f"{name} (`{r['model']}`)" if r["model"] else name
        b = r["best"]
        base = "not drawn" if r["baseline"] is None else f3(r["baseline"])
        if b is None:
            lines.append(f"| {r['study']} | {model} | not measured at an intermediate site | – | – | "
                         f"{r.get('n_candidates', 0)} | {base} |")
            continue
        lo, hi = b["ci95_informative"]
        sites = ", ".join(b["sites"][:2]) + (f" (+{len(b['sites']) - 2})" if len(b["sites"]) > 2 else "")
        lines.append(f"| {r['study']} | {model} | {f3(b['iia_informative'])} [{f3(lo)}, {f3(hi)}] | "
                     f"`{b['name']}` @ {sites} | {b['n_informative']} | {r['n_candidates']} | {base} |")
    return "\n".join(lines)


def write_docs(docs_dir: str | Path) -> Path:
    """Replace the table between the markers in `docs_dir/case_studies.md` with `table(docs_dir)`."""
    page = Path(docs_dir) / "case_studies.md"
    text = page.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    page.write_text(text[:a] + "\n" + table(docs_dir) + "\n" + text[b:])
    return page


if __name__ == "__main__":
    print(write_docs(sys.argv[1] if len(sys.argv) > 1 else "docs"))

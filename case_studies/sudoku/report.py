"""`render(numbers) -> str`: the sudoku case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
the per-round dicts are keyed by str); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.common_report import (as_json, f3, interpretation_head, interval, num, probe_section, qualify, rate,
                                        rate_text, side, verdict)

TITLE = "Case study: sudoku — does the model fill cells in constraint-propagation order?"
AR_TWIN = "AR twin (greedy)"


def _ci(order, key) -> str:
    """` [lo, hi]`: the bootstrap 95% interval of a mean correlation (absent in reports of older runs)."""
    ci = order.get(key)
    return f" [{f3(ci[0])}, {f3(ci[1])}]" if ci else ""


def _order_row(name, ph, order) -> str:
    by = order["mean_commit_step_by_round"]
    return (f"| {name} | {num(ph['accuracy']):.2f} | {num(ph['commit_argmax']['mean_steps']):.1f} | "
            f"{f3(order['mean_rho_round'])}{_ci(order, 'ci95_rho_round')} ({order['rows_with_rho_round']}) | "
            f"{f3(order['mean_rho_position'])}{_ci(order, 'ci95_rho_position')} ({order['rows_with_rho_position']}) | "
            f"{f3(order['concordance'])}{_ci(order, 'ci95_concordance')} ({order['pairs']}) | "
            + " / ".join(f"{num(by[r]):.2f}" for r in sorted(by, key=int)) + " |")


def order_rows(numbers) -> list[str]:
    """Commit order against propagation order: one row per setting, then the AR twin."""
    return [_order_row(name, numbers["phenomena"][name], numbers["order"][name])
            for name in [*numbers["settings"], AR_TWIN]]


def causal_rows(numbers) -> list[str]:
    return [f"| {name} | {f3(e['easy_on_hard']['rate'])} ({e['easy_on_hard']['n']}) | "
            f"{f3(e['hard_on_easy']['rate'])} ({e['hard_on_easy']['n']}) | "
            f"{f3(e['easy_on_easy']['rate'])} ({e['easy_on_easy']['n']}) |" for name, e in numbers["causal"].items()]


def _count(r: dict) -> dict:
    """A stored `{rate, n}` as a rate with its Wilson interval."""
    n = r["n"]
    return rate(round(num(r["rate"]) * n) if n else 0, n)


def interpretation(numbers: dict) -> list[str]:
    """"What this run shows": the study's claims in words, each conditioned on its interval."""
    settings = numbers["settings"]
    first, ar = numbers["order"][settings[0]], numbers["order"][AR_TWIN]
    n_rho = first["rows_with_rho_round"]
    rho = interval(first["mean_rho_round"], first.get("ci95_rho_round"))
    pos = interval(first["mean_rho_position"], first.get("ci95_rho_position"))
    conc, conc_ar = first.get("ci95_concordance"), ar.get("ci95_concordance")
    if side(conc, 0.5) == "above" and conc_ar and conc[0] > num(conc_ar[1]):
        conc_text = qualify(numbers, f"{first['pairs']} pairs", "more often than position order alone gives")
    elif side(conc, 0.5) == "spans":
        conc_text = "inconclusive at this n (the interval includes 0.5)"
    else:
        conc_text = "not separated from what position order alone gives at this n"
    lines = [
        f"- **Commit order against propagation order (default sampler).** Mean rho of the commit step with the "
        f"propagation round: {rho} over the {n_rho} puzzles whose cells commit at different steps; "
        + verdict(first.get("ci95_rho_round"), 0.0, n=n_rho, numbers=numbers, what="puzzles with an order",
                  above="cells commit roughly in constraint-propagation order (non-chronological reasoning, predicted "
                        "cell by cell)",
                  below="cells commit against the propagation order")
        + f". With the cell's position: {pos}; "
        + verdict(first.get("ci95_rho_position"), 0.0, n=first["rows_with_rho_position"], numbers=numbers, what="puzzles with an order",
                  above="the grid fills left to right", below="the grid fills right to left")
        + f". A harder cell commits after an easier one of the same puzzle in "
        f"{interval(first['concordance'], conc)} of {first['pairs']} pairs (ties count half): {conc_text}; the AR "
        f"twin, which writes left to right, gives {interval(ar['concordance'], conc_ar)}.",
        "- **Under every sampler setting** (mean rho with the round [95% CI]): "
        + "; ".join(f"{name} {interval(numbers['order'][name]['mean_rho_round'], numbers['order'][name].get('ci95_rho_round'))}"
                    for name in settings) + ".",
    ]
    for name, e in numbers["causal"].items():
        eh, he = _count(e["easy_on_hard"]), _count(e["hard_on_easy"])
        if eh["n"] and he["n"] and eh["ci95"][0] > he["ci95"][1]:
            what = "easy cells' early results feed the harder ones (intermediate-context reasoning)"
        elif eh["n"] and he["n"] and max(eh["ci95"][1], he["ci95"][1]) < 0.05:
            what = ("no single intermediate cell causes the later ones: the harder cells are fixed without depending "
                    "on any one earlier result (recomputed from the prompt, or redundant across easy cells; this "
                    "study does not separate the two)")
        else:
            what = "inconclusive at this n"
        if not what.startswith("inconclusive"):
            what = qualify(numbers, f"{eh['n']} + {he['n']} patches", what)
        lines.append(f"- **Does the canvas carry intermediate results? ({name})** Patching one cell at the first "
                     f"steps flips another cell's final digit: easy → hard {rate_text(eh)}, "
                     f"hard → easy {rate_text(he)}: {what}.")
    n = numbers["n_puzzles"]
    acc = {k: rate(round(num(numbers["phenomena"][k]["accuracy"]) * n), n) for k in (settings[0], AR_TWIN)}
    lines.append(f"- **Accuracy on these multi-round puzzles:** DiffusionGemma {interval(acc[settings[0]]['rate'], acc[settings[0]]['ci95'])}, "
                 f"the AR twin {interval(acc[AR_TWIN]['rate'], acc[AR_TWIN]['ci95'])} (n = {n}, Wilson intervals).")
    return lines


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    return "\n".join([
        f"Model: the zoo's `sudoku-diffusion` and its AR twin `sudoku-ar` on {numbers['n_puzzles']} held-out 4x4 puzzles whose propagation "
        "needs at least two rounds (the other puzzles predict no order). Round of a cell: when constraint "
        "propagation by naked and hidden singles fills it (0 = given); definitions: docs/case_studies.md and "
        "`case_studies/sudoku/hypothesis.py`.",
        "",
        *interpretation_head(numbers),
        *interpretation(numbers),
        "",
        "## Commit order against propagation order",
        "",
        "| setting | accuracy | mean steps | rho(commit, round) [95% CI] (puzzles) | rho(commit, position) [95% CI] (puzzles) | "
        "harder after easier [95% CI] (pairs) | mean commit step, round 0 / 1 / 2 / ... |",
        "|---|---|---|---|---|---|---|",
        *order_rows(numbers),
        *probe_section(numbers),
        "",
        "Commit step: the first step after which a cell's argmax never changes again (`commit_order`, by argmax).",
        "",
        "![by round](commit_step_by_round.png) ![commit order](commit_order.png)",
        "",
        "![example](commit_heatmap_example.png)",
        "",
        "## Does the canvas carry intermediate results? (causal)",
        "",
        f"Each canvas position is resample-ablated at steps 0-2 in {numbers['n_causal']} puzzles: its input token and "
        "its self-conditioning logits (the continuous channel; absent at step 0) are patched from a run on another "
        "puzzle with the same sampler noise. The table gives the rate at which another blank cell's final digit "
        "flips, over patches that changed the input. If easy cells' early results feed the harder ones "
        "(intermediate-context reasoning), easy → hard should exceed hard → easy.",
        "",
        "| setting | easy → hard (patches) | hard → easy (patches) | easy → easy (patches) |",
        "|---|---|---|---|",
        *causal_rows(numbers),
    ])


__all__ = ["TITLE", "render", "interpretation", "order_rows", "causal_rows"]

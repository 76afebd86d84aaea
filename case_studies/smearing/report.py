"""`render(numbers) -> str`: the smearing case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists, site keys are str); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.common_report import (as_json, f3, figure_links, interpretation_head, num, probe_section, qualify,
                                        slug)
from dgt_interp.studies import iia_table

TITLE = "Case study: smearing — does the count place the list?"
AR_TWIN = "AR twin (greedy)"

# (model, compared on): the count itself, the list untouched (independent), EOS moved to 2 + n (left = right
# there), the list laid out from the start or the end (whatever count character was emitted). independent/length is left out: a patch that does
# nothing already keeps the base length, so no pair is informative for it.
COMBOS = (("independent", "count"), ("independent", "answer"), ("left", "length"), ("left", "list"),
          ("right", "list"))


def _pheno_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | off-centre token mass (mean over steps) | peak (step, d) | "
           "off-centre token mass, step 0 | fraction of steps sequence-smeared | rows with a smeared step | peak off-centre P(EOS) | "
           "drafted count = drafted list length |", "|" + "---|" * 10]
    for name, ph in numbers["phenomena"].items():
        ts, ss, es, ct = ph["token_smearing"], ph["sequence_smearing"], ph["eos_smearing"], ph["count_trace"]
        kind = "AR twin" if name.startswith("AR") else "diffusion"
        step0 = ts["neighbour_mass_by_step"][0] if ts["neighbour_mass_by_step"] else float("nan")
        rb = ph["token_smearing_robust"]
        out.append(f"| {name} | {kind} | {num(ph['accuracy']):.3f} | {num(ph['commit']['mean_steps']):.1f} | "
                   f"{f3(rb['mean'])} | "
                   f"{f3(rb['peak'])} ({rb['peak_step']}, {rb['peak_offset']:+d}) | {f3(step0)} | "
                   f"{f3(ss['fraction_steps_smeared'])} | {ss['rows_with_smearing']}/{ss['rows']} | "
                   f"{f3(es['peak_off_centre'])} | {f3(ct['fraction_steps_count_matches_drafted_list'])} "
                   f"({ct['steps_with_count_and_list']} steps) |")
    return out


def candidate_sites(numbers) -> list[str]:
    """The candidate count sites ("3", "selfcond", "canvas", ...) in the order they were scored (from the
    first held-out scores; [] if no setting has any)."""
    e = next((e for e in numbers["iia"].values() if "held_out" in e), None)
    return list(dict.fromkeys(k.split("|")[0] for k in e["held_out"])) if e else []


def _site_label(w: str) -> str:
    return f"L{w}" if w.isdigit() else w


def _site_table(numbers) -> list[str]:
    out = []
    wheres = candidate_sites(numbers)
    blocks = [(name, e) for name, e in numbers["iia"].items()]
    blocks += [(AR_TWIN, e["ar_twin"]) for _, e in blocks if "held_out" in e.get("ar_twin", {})]
    for name, e in blocks:
        if "held_out" not in e:
            continue
        if not out:
            out = ["| setting | model / compared on | " + " | ".join(_site_label(w) for w in wheres) + " |",
                   "|---|---|" + "---|" * len(wheres)]
        for m, c in COMBOS:
            cells = [f3(e["held_out"].get(f"{w}|{m}|{c}", {}).get("iia_informative")) for w in wheres]
            out.append(f"| {name} | {m} / {c} | " + " | ".join(cells) + " |")
    return out


def _verdict(numbers) -> list[str]:
    """Plain statements, each with its numbers, of whether smearing and count-placement appear."""
    ph = numbers["phenomena"]
    settings = numbers["settings"]
    lines = []
    for name in (settings[0], settings[-1]):
        p = ph[name]
        rb, ss, es = p["token_smearing_robust"], p["sequence_smearing"], p["eos_smearing"]
        smear = num(rb["peak"]) >= 0.05 or num(ss["fraction_steps_smeared"]) >= 0.05
        lines.append(f"- **{name}** ({num(p['commit']['mean_steps']):.1f} steps on average, accuracy "
                     f"{num(p['accuracy']):.3f}): "
                     + ("smearing **appears**" if smear else "smearing is **absent**")
                     + f" (off-centre token mass {f3(rb['mean'])} on average, peak {f3(rb['peak'])} at step "
                     f"{rb['peak_step']}, offset {rb['peak_offset']:+d}; {f3(ss['fraction_steps_smeared'])} of row-steps best aligned at a "
                     f"shift, in {ss['rows_with_smearing']}/{ss['rows']} rows; peak off-centre EOS mass "
                     f"{f3(es['peak_off_centre'])}). Threshold for 'appears': peak off-centre mass ≥ 0.05 (steps with "
                     "≥ 25% of rows active) or ≥ 5% smeared steps.")
    ar = ph[AR_TWIN]
    lines.append(f"- **AR twin**: accuracy {num(ar['accuracy']):.3f}; sequence-smeared steps "
                 f"{f3(ar['sequence_smearing']['fraction_steps_smeared'])} (AR writes each token once, in place).")
    for name, e in numbers["iia"].items():
        if "held_out" not in e:
            continue
        w = e["selected_site"]
        g = (lambda m, c: e["held_out"][f"{w}|{m}|{c}"])
        lines.append(f"- **IIA [{name}]**, site {_site_label(w)} (chosen on the selection half): the emitted count follows "
                     f"{f3(g('independent', 'count')['iia_informative'])}; EOS follows the patched count "
                     f"(length) {f3(g('left', 'length')['iia_informative'])} "
                     f"(CI {f3(g('left', 'length')['ci95_informative'][0])}–{f3(g('left', 'length')['ci95_informative'][1])}, "
                     f"n={g('left', 'length')['n_informative']}); list laid out as the left-anchored model "
                     f"{f3(g('left', 'list')['iia_informative'])}, right-anchored "
                     f"{f3(g('right', 'list')['iia_informative'])}, independent (only the count changes) "
                     f"{f3(g('independent', 'answer')['iia_informative'])}; random sites (length) "
                     f"{f3(e['random_sites_left_length']['mean_iia_informative'])}: "
                     + _placement(numbers, g("left", "length"), "the count at this site") + ".")
        ar = e.get("ar_twin", {})
        if "held_out" in ar and ar.get("selected_site") is not None:
            r = ar["held_out"].get(f"{ar['selected_site']}|left|length")
            if r:
                lines.append(f"- **IIA, AR twin [{name}]**, site {_site_label(ar['selected_site'])}: EOS follows the "
                             f"patched count in {f3(r['iia_informative'])} (CI {f3(r['ci95_informative'][0])}–"
                             f"{f3(r['ci95_informative'][1])}, n={r['n_informative']}): "
                             + _placement(numbers, r, "the count the AR twin reads") + ".")
    return lines


def _placement(numbers: dict, r: dict, what: str) -> str:
    """Whether `what` decides where the list ends, from the 95% interval of "EOS at 2 + n" (vs 0.5)."""
    lo, hi = (num(x) for x in r["ci95_informative"])
    n = f"{r['n_informative']} pairs"
    if lo > 0.5:
        return qualify(numbers, n, f"{what} decides where the list lands")
    if hi < 0.5:
        return qualify(numbers, n, f"{what} does not decide where the list lands (the 95% interval lies below 0.5)")
    return f"inconclusive at this n ({n}: the 95% interval includes 0.5)"


def phenomena_figures(numbers) -> list[str]:
    """Names of the phenomena figures, in the order the study makes them."""
    s = numbers["settings"]
    return list(dict.fromkeys([*(f"{kind}_smearing_{slug(name)}" for name in (s[0], s[-1]) for kind in ("token", "eos")),
                               "sequence_smearing_slow", "token_smearing_ar"]))


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    iia_rows = numbers["iia_rows"]
    lines = [
        "Models: the zoo's `count-diffusion` (DiffusionGemma, canvas 11) and its AR twin `count-ar`, on the count "
        f"task ({numbers['n_phenomena_prompts']} prompts from the task distribution for the phenomena, "
        f"{numbers['n_pairs']} (base, source) pairs with different counts for IIA, half to choose the site, half "
        "to score it). Definitions: docs/case_studies.md; the hypotheses: case_studies/smearing/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_verdict(numbers),
        "",
        "## Phenomena by sampler setting",
        "",
        *_pheno_rows(numbers),
        *probe_section(numbers),
        "",
        "Token-smear mass at (step k, offset d): mean probability of the final token of position p at p + d "
        "(where another token ends up). P(EOS) off centre: mass of EOS one or two positions away from where the "
        "list finally ends. Last column: fraction of (row, step) argmax canvases with a digit count and an EOS "
        "whose written count equals the drafted list's length (1.0 = every intermediate canvas is a consistent "
        "answer).",
        "",
        *figure_links(phenomena_figures(numbers), ("token_smearing", "eos_smearing", "sequence")),
        "",
        "An example run (the row that took the most steps under the slowest setting): argmax canvas per step.",
        "",
        "![canvas](canvas_example.png)",
        "",
        "## Does the count decide where the list lands? Interchange interventions",
        "",
        "Variable: the count n, aligned to canvas position 0 (the count character): the residual after block L, "
        "the self-conditioning channel or the count token read there, at every step. Patched from a source problem "
        "with another count. Predictions: *independent* (the list ignores n: only the count character changes), "
        "*left* (n slots filled from the start; EOS at 2 + n), *right* (n slots filled from the end). `/count`: "
        "only the count character is compared (every model predicts the source's count); `/length`: only where EOS "
        "lands (left = right there); `/list`: everything after the count character (the list and its EOS); "
        "`/answer`: every character ('#' = a slot with no "
        "member, any digit matches). The site is chosen on the selection half (where the emitted count follows the patch, "
        "the last block excluded: its residual at position 0 is the count's logits) and scored on the held-out "
        "half; random sites have the same shape (random layer and position). Informative pairs: the prediction differs from the base answer.",
        "",
        iia_table(iia_rows) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "Held-out IIA (informative pairs) of every candidate site (AR twin: no self-conditioning channel, n/a):",
        "",
        *_site_table(numbers),
        "",
        "![iia](iia.png)" if iia_rows else "",
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "COMBOS", "render", "candidate_sites", "phenomena_figures"]

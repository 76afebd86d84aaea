"""`render(numbers) -> str`: the dedupe case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.common_report import (as_json, best_iia_lines, f3, interpretation_head, interval, interval_above,
                                        isnan, num, probe_section, qualify, slug)
from dgt_interp.studies import iia_table

TITLE = "Case study: dedupe — token and sequence smearing, and what places a token"
MODELS_SCORED = ("scan", "independent")
AR_TWIN, RANDOM = "AR twin (greedy)", "random-order baseline"  # the random rows are named f"{RANDOM}, {setting}"


def _pheno_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | source | off-centre token mass, all steps [95% CI] | "
           "off-centre token mass, step 0 [95% CI] | rows with a sequence-smeared step [95% CI] | "
           "fraction of row-steps smeared |", "|" + "---|" * 9]
    for name, p in numbers["phenomena"].items():
        kind = "AR twin" if name == AR_TWIN else "none (shuffle)" if name.startswith(RANDOM) else "diffusion"
        for src in ("probs", "argmax"):
            if src not in p:
                continue
            s = p[src]
            out.append(f"| {name} | {kind} | {num(p['accuracy']):.3f} | {num(p['mean_steps']):.1f} | {src} | "
                       f"{interval(s['mass_all_steps'], s['mass_all_steps_ci95'], 3)} | "
                       f"{interval(s['mass_step0'], s['mass_step0_ci95'], 3)} | "
                       f"{interval(s['rows_smeared_fraction'], s['rows_smeared_ci95'], 3)} "
                       f"({s['rows_smeared']}/{s['rows']}) | "
                       f"{f3(s['sequence_smearing']['fraction_steps_smeared'])} |")
    return out


def _verdict(numbers) -> list[str]:
    ph = numbers["phenomena"]
    ar = ph[AR_TWIN]["argmax"]
    lines = []
    for name in numbers["settings"]:
        d, rnd = ph[name]["argmax"], ph[f"{RANDOM}, {name}"]["argmax"]
        seq = interval_above(d, ar, "rows_smeared") and interval_above(d, rnd, "rows_smeared")
        tok0 = interval_above(d, ar, "mass_step0") and interval_above(d, rnd, "mass_step0")
        tok = interval_above(d, ar, "mass_all_steps") and interval_above(d, rnd, "mass_all_steps")
        n = f"{d['rows']} rows"
        pr = ph[name]["probs"]
        lines.append(
            f"- **{name}** (accuracy {num(ph[name]['accuracy']):.3f}, {num(ph[name]['mean_steps']):.1f} steps): "
            f"off-centre token mass (argmax canvas) at step 0 {interval(d['mass_step0'], d['mass_step0_ci95'], 3)} vs "
            f"AR twin {interval(ar['mass_step0'], ar['mass_step0_ci95'], 3)} and random order "
            f"{interval(rnd['mass_step0'], rnd['mass_step0_ci95'], 3)}: "
            + qualify(numbers, n, "token smearing **appears** at the first step (the interval lies above both)" if tok0
                      else "token smearing is **not shown** at the first step (the intervals overlap or lie below)")
            + f"; over all steps {interval(d['mass_all_steps'], d['mass_all_steps_ci95'], 3)} vs AR "
            f"{interval(ar['mass_all_steps'], ar['mass_all_steps_ci95'], 3)} and random order "
            f"{interval(rnd['mass_all_steps'], rnd['mass_all_steps_ci95'], 3)} ("
            + ("above both" if tok else "not above both")
            + f"); softmax mass {interval(pr['mass_step0'], pr['mass_step0_ci95'], 3)} at step 0. Rows with a "
            f"sequence-smeared step {interval(d['rows_smeared_fraction'], d['rows_smeared_ci95'], 3)} vs AR twin "
            f"{interval(ar['rows_smeared_fraction'], ar['rows_smeared_ci95'], 3)} and random order "
            f"{interval(rnd['rows_smeared_fraction'], rnd['rows_smeared_ci95'], 3)}: "
            + ("sequence smearing **appears** (above both)." if seq else
               "sequence smearing is **not shown** (the intervals overlap or lie below)."))
    for name, c in numbers["causal"].items():
        r = c["rates"]
        right, left, far = (r[k] for k in ("right neighbour (q+1)", "left neighbour (q-1)", "random sites (|p-q| >= 2)"))
        shown = not isnan(right["ci95"][0]) and not isnan(far["ci95"][1]) and right["ci95"][0] > far["ci95"][1]
        lines.append(
            f"- **Causal test [{name}]**: patching the drafted token and its self-conditioning logits at q flips the "
            f"final token at q + 1 in "
            f"{interval(right['rate'], right['ci95'], 3)} of patches, at q - 1 in {interval(left['rate'], left['ci95'], 3)}, "
            f"at random sites two or more away in {interval(far['rate'], far['ci95'], 3)}: "
            + qualify(numbers, f"{right['events']} patches",
                      "a drafted token places its right neighbour (the interval lies above the random sites')" if shown
                      else "no effect on the right neighbour above random sites"))
    lines += best_iia_lines(numbers)
    return lines


def _site_table(numbers) -> list[str]:
    out = []
    for name, e in numbers["iia"].items():
        if "hypotheses" not in e:
            continue
        wheres = list(dict.fromkeys(k.split("@")[1].split("[")[0] for k in e["hypotheses"]))
        if not out:
            out = ["| setting | model | " + " | ".join(wheres) + " |", "|---|---|" + "---|" * len(wheres)]
        for m in MODELS_SCORED:
            cells = [f3(e["hypotheses"].get(f"o1@{w}[{m}]", {}).get("iia_informative")) for w in wheres]
            out.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    return out


def phenomena_figures(numbers) -> list[str]:
    s = numbers["settings"]
    return [f"{kind}_smearing_{slug(name)}" for name in dict.fromkeys((s[0], s[-1])) for kind in ("token", "sequence")] \
        + ["sequence_smearing_random"]


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    iia_rows = numbers["iia_rows"]
    return "\n".join([
        "Models: the zoo's `dedupe-diffusion` (DiffusionGemma, 2 layers, canvas 11) and its AR twin `dedupe-ar`, on "
        "the dedupe task (`31337254=` -> `317254`: the distinct digits in first-occurrence order; 8-14 digits, 2-10 "
        f"distinct). {numbers['n_phenomena_prompts']} held-out prompts for the phenomena, "
        f"{numbers['n_causal_prompts']} (base, source) prompts for the canvas patches, {numbers['n_pairs']} pairs "
        "for IIA. Hypotheses: case_studies/dedupe/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_verdict(numbers),
        "",
        "## Token and sequence smearing",
        "",
        "Off-centre token mass: for each final token, its mass (softmax probability, or argmax indicator) one or two "
        "positions away from where it ends up, summed over offsets, pooled over rows and answer positions "
        "(`phenomena.token_smearing`; 95% bootstrap over rows). Sequence smearing: a row-step whose argmax canvas "
        "matches the final answer better at a shift of ±1-2 than in place (`phenomena.sequence_smearing`); Wilson "
        "95% interval of the fraction of rows with such a step. AR twin: greedy, one token per step, always in place. "
        "Random-order baseline (one per setting): the same rows and steps with, at every step, "
        "as many answer tokens in place as the model's argmax canvas holds, at random positions, and uniform random "
        "other tokens elsewhere (same progress, no systematic shift: off-centre matches are chance coincidences).",
        "",
        *_pheno_rows(numbers),
        *probe_section(numbers),
        "",
        *[f"![{k}]({k}.png)" for k in phenomena_figures(numbers)],
        "",
        f"An example run (the row with the most sequence-smeared steps under `{numbers['settings'][-1]}`, row "
        f"{numbers['example_row']}): argmax canvas per step.",
        "",
        "![canvas](canvas_example.png)",
        "",
        "## Causal test: does a drafted token place its neighbour?",
        "",
        "`phenomena.canvas_flips`: the drafted token the decoder reads at canvas position q at step k and the "
        "previous step's logits entering the self-conditioning channel there (where a smeared token's probability "
        "is carried; absent at step 0) are replaced by a source run's (another problem, same replayed noise); does "
        "the base run's final token at p change? "
        "Pooled over (step, q, row) where the patch changed the input and p is an answer position; 95% bootstrap "
        "over rows. If tokens are placed from their drafted left neighbour, q + 1 flips far more often than "
        "positions two or more away (random sites).",
        "",
        "| setting | steps patched (of base steps) | right neighbour q+1 [95% CI] | left neighbour q-1 [95% CI] | "
        "random sites, abs(p-q) ≥ 2 [95% CI] | later → earlier | earlier → later |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {c['steps_patched']} ({c['base_steps']}) | "
          + " | ".join(f"{interval(c['rates'][k]['rate'], c['rates'][k]['ci95'], 3)} ({c['rates'][k]['hits']}/"
                       f"{c['rates'][k]['events']})"
                       for k in ("right neighbour (q+1)", "left neighbour (q-1)", "random sites (|p-q| >= 2)"))
          + f" | {f3(c['later_on_earlier'])} | {f3(c['earlier_on_later'])} |" for name, c in numbers["causal"].items()],
        "",
        *[f"![canvas_flips_{slug(name)}](canvas_flips_{slug(name)}.png)" for name in numbers["causal"]],
        "",
        "## Interchange interventions: is the second digit where the scan continues from?",
        "",
        "Variable: o1, the answer's second digit, aligned to canvas position 1 (the residual after block L, the "
        "self-conditioning channel or the drafted token read there, every step; AR twin: the residual at the step "
        "that predicts o1, or o1 read at the next step). Pairs: the source's o1 occurs in the base's digits and "
        "differs from the base's. Predictions: *scan* (the left-to-right algorithm: each later digit is the first "
        "unseen digit after where o1 first occurs, so the rest of the answer moves) and *independent* (only "
        "position 1 changes). Informative pairs: the prediction differs from the base answer. Random sites have the "
        "shape of `o1@L0[scan]`.",
        "",
        iia_table([(label, r) for label, r in iia_rows]) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "Held-out IIA (informative pairs) per site:",
        "",
        *_site_table(numbers),
        "",
        "![iia](iia.png)" if iia_rows else "",
    ])


__all__ = ["TITLE", "MODELS_SCORED", "render", "phenomena_figures"]

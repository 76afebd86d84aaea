"""`render(numbers) -> str`: the compose_odd case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.chain_common import training_lines
from case_studies.common_report import (as_json, best_iia_lines, f3, interpretation_head, interval, interval_above, num,
                                        probe_section, qualify, rate_text, side, slug)
from dgt_interp.studies import iia_table

TITLE = "Case study: compose_odd — token and sequence smearing of a list placed last"
HEADLINE = "c6@both:all@pos6-9/chain"
SUFFIX_SITES, CONTROL_SITES = "drafted states c6…c9", "drafted states c0…c3 (control)"
AR_TWIN, RANDOM = "AR twin (greedy)", "random-order baseline"  # the random rows are named f"{RANDOM}, {setting}"
FLIPS, KEPT, LIST = "parity flips", "parity kept", "list positions (random sites)"


def _pheno_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | source | off-centre token mass in the list, all steps [95% CI] | "
           "step 0 [95% CI] | rows with a sequence-smeared step [95% CI] | fraction of row-steps smeared |",
           "|" + "---|" * 9]
    for name, p in numbers["phenomena"].items():
        kind = "AR twin" if name == AR_TWIN else "none (shuffle)" if name.startswith(RANDOM) else "diffusion"
        for src in ("probs", "argmax"):
            if src not in p:
                continue
            s = p[src]
            out.append(f"| {name} | {kind} | {f3(p['accuracy'])} | {f3(p['mean_steps'], 1)} | {src} | "
                       f"{interval(s['mass_all_steps'], s['mass_all_steps_ci95'], 3)} | "
                       f"{interval(s['mass_step0'], s['mass_step0_ci95'], 3)} | "
                       f"{interval(s['rows_smeared_fraction'], s['rows_smeared_ci95'], 3)} "
                       f"({s['rows_smeared']}/{s['rows']}) | {f3(s['sequence_smearing']['fraction_steps_smeared'])} |")
    return out


def _causal_rows(numbers) -> list[str]:
    out = ["| setting | patched | events | list shifted (parity flips: in the predicted direction) [95% CI] | "
           "list shifted either way [95% CI] |", "|---|---|---|---|---|"]
    for name, c in numbers["causal"].items():
        for kind, r in c["shifts"].items():
            main = r.get("predicted_shift") or r.get("shift")
            out.append(f"| {name} | {kind} | {main['n']} | {rate_text(main)} | {rate_text(r['any_shift'])} |")
    return out


def _verdict(numbers) -> list[str]:
    ph = numbers["phenomena"]
    ar = ph[AR_TWIN]["argmax"]
    lines = []
    for name in numbers["settings"]:
        d, rnd = ph[name]["argmax"], ph[f"{RANDOM}, {name}"]["argmax"]
        seq = interval_above(d, ar, "rows_smeared") and interval_above(d, rnd, "rows_smeared")
        tok = interval_above(d, ar, "mass_all_steps") and interval_above(d, rnd, "mass_all_steps")
        n = f"{d['rows']} rows"
        lines.append(
            f"- **{name}** (accuracy {f3(ph[name]['accuracy'])}, {f3(ph[name]['mean_steps'], 1)} steps): rows with a "
            f"sequence-smeared step (the list best aligned at a shift) {interval(d['rows_smeared_fraction'], d['rows_smeared_ci95'], 3)} "
            f"vs AR twin {interval(ar['rows_smeared_fraction'], ar['rows_smeared_ci95'], 3)} and random order "
            f"{interval(rnd['rows_smeared_fraction'], rnd['rows_smeared_ci95'], 3)}: "
            + qualify(numbers, n, "sequence smearing **appears** (the interval lies above both)" if seq
                      else "sequence smearing is **not shown** (the intervals overlap or lie below)")
            + f". Off-centre token mass in the list over all steps {interval(d['mass_all_steps'], d['mass_all_steps_ci95'], 3)} "
            f"vs AR {interval(ar['mass_all_steps'], ar['mass_all_steps_ci95'], 3)} and random order "
            f"{interval(rnd['mass_all_steps'], rnd['mass_all_steps_ci95'], 3)}: "
            + ("token smearing **appears** (above both)." if tok else "token smearing is **not shown** (not above both)."))
        lt = numbers["list_test"].get(name, {})
        if SUFFIX_SITES in lt:
            left, tail = lt[SUFFIX_SITES]["source_list"], lt[CONTROL_SITES]["source_list"]
            shown = side(left["ci95"], max(num(tail["ci95"][1]), num(lt["unpatched"]["ci95"][1]))) == "above"
            lines.append(
                f"  Causal (the list is read off the drafted states): patching the drafted c6…c9 (canvas tokens and "
                f"self-conditioning logits, every step) from a source with the same maps and another start digit makes "
                f"the emitted list the source's, each digit at the source's offset, in {rate_text(left)} of pairs; as "
                f"many sites on c0…c3 in {f3(tail['rate'])}, unpatched {f3(lt['unpatched']['rate'])}: "
                + (qualify(numbers, f"{left['n']} pairs", "where the list sits is read off the drafted states (the "
                           "interval lies above the control's)") if shown else
                   "not shown (the interval does not clear the control's)") + ".")
        elif lt:
            lines.append(f"  Causal (the list is read off the drafted states): {lt.get('error')}.")
        c = numbers["causal"].get(name)
        if c:
            fl, kept, lst = c["shifts"][FLIPS]["predicted_shift"], c["shifts"][KEPT]["shift"], c["shifts"][LIST]["shift"]
            ctrl_hi = max(num(kept["ci95"][1]) if kept["n"] else 0.0, num(lst["ci95"][1]) if lst["n"] else 0.0)
            shown = fl["n"] > 0 and side(fl["ci95"], ctrl_hi) == "above"
            lines.append(
                f"  Same step: patching a drafted state with one of the other parity moves the list in the patched step's "
                f"argmax by one position in the direction the odd count predicts in {rate_text(fl)} of patches; "
                f"patches that keep the parity move it in {f3(kept['rate'])}, patches at list positions in "
                f"{f3(lst['rate'])}: "
                + qualify(numbers, f"{fl['n']} patches", "the list's place is read off the drafted states (the "
                          "interval lies above both controls')" if shown else
                          "not shown (the interval does not clear the controls')") + ".")
    lines += best_iia_lines(numbers)
    return lines


def _list_rows(numbers) -> list[str]:
    out = ["| setting | patched (every step) | pairs | emitted list = the source's [95% CI] | = the base's [95% CI] |",
           "|---|---|---|---|---|"]
    for name, lt in numbers["list_test"].items():
        if "error" in lt:
            out.append(f"| {name} | – | – | {lt['error']} | – |")
            continue
        out.append(f"| {name} | nothing | {lt['pairs_kept']} | {rate_text(lt['unpatched'])} | – |")
        for key in (SUFFIX_SITES, CONTROL_SITES):
            r = lt[key]
            out.append(f"| {name} | {key} | {lt['pairs_kept']} | {rate_text(r['source_list'])} | {rate_text(r['base_list'])} |")
    return out


def phenomena_figures(numbers) -> list[str]:
    s = numbers["settings"]
    return [f"{kind}_smearing_{slug(name)}" for name in dict.fromkeys((s[0], s[-1])) for kind in ("token", "sequence")]


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    iia_rows = numbers["iia_rows"]
    return "\n".join([
        f"Models: the zoo's `compose_odd-diffusion` (DiffusionGemma, 2 layers, canvas {numbers['canvas_length']}) and "
        "its AR twin `compose_odd-ar` (same size and data), on the compose_odd task (`+#+++##+>?3=` -> "
        "`6554320216:5531`: the compose task's ten states, ':', then the odd states in order). An odd state's place "
        "in the list is the list's start + the odd states to its left, which are composed last. "
        f"{numbers['n_phenomena_prompts']} held-out prompts for the phenomena, {numbers['n_causal_prompts']} (base, "
        f"source) prompts for the canvas patches, {numbers['n_pairs']} pairs for IIA. The list region is canvas "
        f"positions {numbers['region'][0]}-{numbers['region'][-1]}. Layout: case_studies/compose_odd/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_verdict(numbers),
        "",
        "## Training (from the models' recipe.json)",
        "",
        *training_lines(numbers),
        "",
        "## Token and sequence smearing in the list",
        "",
        "Off-centre token mass: for each final list token, its mass (softmax probability, or argmax indicator) one or "
        "two positions away from where it ends up, summed over offsets, pooled over rows and list positions "
        "(`phenomena.token_smearing(positions=...)`; 95% bootstrap over rows). Sequence smearing: a row-step whose "
        "list matches the final list better at a shift of ±1-2 than in place (`phenomena.sequence_smearing("
        "positions=...)`); Wilson 95% interval of the fraction of rows with such a step. AR twin: greedy, one token "
        "per step, always in place. Random-order baseline (one per setting): the same rows and steps with, at every "
        "step, as many list tokens in place as the model's argmax canvas holds, at random list positions, and "
        "uniform random tokens at the other list positions.",
        "",
        *_pheno_rows(numbers),
        *probe_section(numbers),
        "",
        *[f"![{k}]({k}.png)" for k in phenomena_figures(numbers)],
        "",
        f"An example run (the row with the most sequence-smeared steps under `{numbers['settings'][0]}`, row "
        f"{numbers['example_row']}): argmax canvas per step.",
        "",
        "![canvas](canvas_example.png)",
        "",
        "## Causal test: is the list read off the drafted states?",
        "",
        "Pairs: the source shares the base's maps and starts from another digit, so its states, and with them which "
        "are odd and where each lands in the list, differ. The drafted states c6…c9 (canvas tokens and "
        "self-conditioning logits, every step) are patched from the source: a consistent state of the base's own "
        "chain to continue from. If the list is written from the drafted states, the emitted list is the source's. "
        "Control: as many sites on the drafted c0…c3, which the model checks against the unpatched states to their "
        "right. Pairs the model answers correctly unpatched.",
        "",
        *_list_rows(numbers),
        "",
        "Same step: the single-state patches of `phenomena.canvas_flips`, read off the patched step's argmax.",
        "",
        "`phenomena.canvas_flips`: the drafted state the decoder reads at canvas position q < 10 at step k, and the "
        "previous step's logits entering the self-conditioning channel there, are replaced by a source run's "
        "(another problem, same replayed noise). Events: (step, q, row) where the patch changed the input and both "
        "drafted tokens are digits. If the source's state has the other parity, every odd state right of q moves "
        "one position in the list (+1 if an odd state enters, -1 if one leaves). `list_shift`: the shift (±1) that "
        "best aligns the patched step's list with the unpatched step's, where it beats staying in place. Controls: "
        "patches that keep the parity, and patches at list positions.",
        "",
        *_causal_rows(numbers),
        "",
        *[f"![canvas_flips_step_{slug(name)}](canvas_flips_step_{slug(name)}.png)" for name in numbers["causal"]],
        "",
        "## Interchange interventions: the drafted suffix c6…c9",
        "",
        "As in the compose study: sources share the base's maps and start from another digit; the drafted states "
        "c6…c9 are patched (canvas tokens, self-conditioning logits, both, or the residual after block 0 at "
        "positions 6-9, every step); the emitted c0…c5 should be the source's. AR twin: pairs it answers correctly "
        f"({numbers['ar_pool']['correct']}/{numbers['ar_pool']['n']}).",
        "",
        *[f"- {name}: {r['error']}" for name, r in numbers["iia"].items() if "error" in r],
        "",
        iia_table(iia_rows) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "![iia](iia.png)" if iia_rows else "",
    ])


__all__ = ["TITLE", "HEADLINE", "AR_TWIN", "RANDOM", "render", "phenomena_figures"]

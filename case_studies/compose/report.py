"""`render(numbers) -> str`: the compose case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.chain_common import training_lines
from case_studies.common_report import (as_json, f3, interpretation_head, interval, num, probe_section, qualify,
                                        rate_text, side, slug)
from dgt_interp.studies import iia_table

TITLE = "Case study: compose — non-chronological reasoning, intermediate context and self-correction"
HEADLINE = "c6@both:all@pos6-9/chain"  # the IIA the findings quote (`link_at(6, "both", "all", span=4, compare="chain")`)
STEP_HEADLINE = "c8@both:step1@pos8-9/next"  # the patch whose step-1 reading the findings quote
SINGLE = "c6@both:all/chain"  # c6's own position alone
SELFCOND, CANVAS = "c6@selfcond:all@pos6-9/chain", "c6@canvas:all@pos6-9/chain"
AR = "AR twin (greedy)"
LEFT, RIGHT, FAR = "left neighbour (q-1)", "right neighbour (q+1)", "random sites (|p-q| >= 2)"


def _record_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | mean rho (commit step vs position) [95% CI] | "
           "random order: mean rho [95% CI] | right to left [95% CI] | random order: right to left [95% CI] | "
           "all at once | mean commit step c0 … c9 |", "|" + "---|" * 10]
    for name, r in numbers["records"].items():
        c, ro = r["commit"], r["random_order"]
        kind = "AR twin" if name == AR else "diffusion"
        steps = " / ".join(f3(x, 1) for x in r["mean_commit_step"])
        out.append(f"| {name} | {kind} | {f3(r['accuracy'])} | {f3(c['mean_steps'], 2)} | "
                   f"{interval(c['mean_rho'], c['ci95_rho'], 3)} | {interval(ro['mean_rho'], ro['ci95_rho'], 3)} | "
                   f"{rate_text(r['right_to_left'])} | "
                   f"{interval(ro['fraction_right_to_left'], ro['ci95_right_to_left'], 3)} | "
                   f"{f3(r['all_at_once']['rate'])} | {steps} |")
    return out


def _step0_rows(numbers) -> list[str]:
    n = len(next(iter(numbers["records"].values()))["mean_commit_step"])
    out = ["| setting | " + " | ".join(f"c{j} ({n - j} maps)" for j in range(n)) + " |", "|" + "---|" * (n + 1)]
    for name, r in numbers["records"].items():
        if "step0_argmax" in r:
            out.append(f"| {name} | " + " | ".join(f3(s["rate"]) for s in r["step0_argmax"]) + " |")
            break  # step 0 does not depend on the sampler setting
    return out


def _causal_rows(numbers) -> list[str]:
    out = ["| setting | read at | digit left of the patch (p = q-1) [95% CI] | right of it (p = q+1) [95% CI] | "
           "two or more away [95% CI] | later→earlier | earlier→later |", "|" + "---|" * 7]
    for name, c in numbers["causal"].items():
        for at, label in (("step", "the patched step"), ("final", "the emitted answer")):
            x = c[at]
            r = x["rates"]
            out.append(f"| {name} | {label} | {interval(r[LEFT]['rate'], r[LEFT]['ci95'], 3)} "
                       f"({r[LEFT]['hits']}/{r[LEFT]['events']}) | {interval(r[RIGHT]['rate'], r[RIGHT]['ci95'], 3)} "
                       f"({r[RIGHT]['hits']}/{r[RIGHT]['events']}) | {interval(r[FAR]['rate'], r[FAR]['ci95'], 3)} "
                       f"({r[FAR]['hits']}/{r[FAR]['events']}) | {f3(x['later_on_earlier'])} | {f3(x['earlier_on_later'])} |")
    return out


def _step_rows(numbers) -> list[str]:
    if not numbers["step_effect"]:
        return ["(not measured: the diffusion model answered too few pairs correctly unpatched, see the IIA section)"]
    out = ["| setting | patched at step 1 | argmax at position 7 after step 1 = o7(c8_src) [95% CI] |", "|---|---|---|"]
    for name, e in numbers["step_effect"].items():
        for k, r in e.items():
            label = "nothing (unpatched base)" if k == "unpatched" else f"`{k}`"
            out.append(f"| {name} | {label} | {rate_text(r)} |")
    return out


def _order_lines(numbers, name, ar) -> list[str]:
    r = numbers["records"][name]
    c, ro, rtl = r["commit"], r["random_order"], r["right_to_left"]
    n_rows = f"{c['rows_with_order']} rows with an order"
    lo_rho, hi_rho = c["ci95_rho"] or (None, None)
    beats_random = hi_rho is not None and num(hi_rho) < num(ro["ci95_rho"][0] if ro["ci95_rho"] else None)
    where = side(c["ci95_rho"], 0.0)
    claim = (qualify(numbers, n_rows, "the answer commits right to left (mean rho's 95% interval below 0"
                     + (" and below the random-order baseline's" if beats_random else "") + ")")
             if where == "below" else
             qualify(numbers, n_rows, "the answer commits left to right") if where == "above" else
             f"inconclusive at this n ({n_rows}: the 95% interval of the mean rho includes 0)")
    above_random = side(rtl["ci95"], num(ro["fraction_right_to_left"])) == "above"
    lines = [f"- **Non-chronological order, {name}** ({f3(c['mean_steps'], 2)} steps, accuracy {f3(r['accuracy'])}): "
             f"mean rho {interval(c['mean_rho'], c['ci95_rho'], 3)} against {interval(ro['mean_rho'], ro['ci95_rho'], 3)} "
             f"under random order and {f3(ar['commit']['mean_rho']) if ar else 'n/a'} on the AR twin: {claim}. Right to "
             f"left in {rate_text(rtl)} of rows vs {f3(ro['fraction_right_to_left'])} under random order"
             + (" (95% interval above it)." if above_random else " (95% interval not above it).")]
    c = numbers["causal"].get(name)
    if c:
        o = c["order"]
        shown = side(o["difference_ci95"], 0.0) == "above"
        lines.append(f"  Causal: patching the canvas at q (token and self-conditioning logits, from another problem) and "
                     f"reading the argmax of the same step, the effect of a later position on an earlier one (max over "
                     f"steps, mean over q > p) is {interval(o['later_on_earlier'], o['later_on_earlier_ci95'], 3)}, of "
                     f"an earlier on a later one {interval(o['earlier_on_later'], o['earlier_on_later_ci95'], 3)}; "
                     f"difference {interval(o['difference'], o['difference_ci95'], 3)}: "
                     + (qualify(numbers, f"{numbers['n_causal_prompts']} rows", "later positions inform earlier ones "
                                "(the difference's interval lies above 0)") if shown else
                        "not shown at this n (the difference's interval includes 0)") + ".")
    return lines


def _context_lines(numbers, name) -> list[str]:
    lines = []
    e = numbers["step_effect"].get(name)
    if e and STEP_HEADLINE in e:
        h = e[STEP_HEADLINE]
        ctrl = [r for k, r in e.items() if k not in ("unpatched", STEP_HEADLINE)] + [e["unpatched"]]
        top = max(num(r["ci95"][1]) for r in ctrl)
        shown = side(h["ci95"], top) == "above"
        lines.append(f"- **Intermediate context, {name}**: patching the drafted c8 c9 (written at step 0; canvas tokens "
                     f"and self-conditioning logits) at step 1 only, from a source with the same maps and another "
                     f"start digit, makes position 7's argmax right after step 1 o7(c8_src) in {rate_text(h)} of "
                     f"pairs; unpatched {f3(e['unpatched']['rate'])}, the same patch at positions 2-3 or 4-5 at most "
                     f"{f3(max(num(r['rate']) for r in ctrl))}: "
                     + (qualify(numbers, f"{h['n']} pairs", "the next digit is computed from the drafted ones (the "
                                "interval lies above every control's)") if shown else
                        "not shown at this n (the interval does not clear the controls')") + ".")
    iia = numbers["iia"].get(name, {})
    if "hypotheses" in iia and HEADLINE in iia["hypotheses"]:
        hs = iia["hypotheses"]
        h = hs[HEADLINE]
        rnd = iia["random_sites"]["mean_iia_informative"]
        sc, cv = hs.get(SELFCOND, {}), hs.get(CANVAS, {})
        lines.append(f"  Every step, the drafted suffix c6…c9 patched from the source makes the emitted c0…c5 the "
                     f"source's chain in {interval(h['iia_informative'], h['ci95_informative'], 3)} of pairs "
                     f"(n = {h['n_informative']}); through the self-conditioning logits alone "
                     f"{interval(sc.get('iia_informative'), sc.get('ci95_informative'), 3)}, the canvas tokens alone "
                     f"{f3(cv.get('iia_informative'))}; c6's position alone {f3(hs.get(SINGLE, {}).get('iia_informative'))} "
                     f"(one drafted digit that its unpatched right neighbour contradicts); random sites {f3(rnd)} "
                     "(they include the compared positions' own canvas, which the model copies).")
    c = numbers["causal"].get(name)
    if c:
        cor = c["corrected"]
        kd = numbers["records"][name]["kept_drafts"]
        lines.append(f"- **Retroactive self-correction, {name}**: rows where the model kept a wrong digit in the canvas "
                     f"and overwrote it later (`find_drafts`, no patch): {rate_text(kd['rows'])} ({kd['n']} drafts; "
                     f"the AR twin never overwrites). Causal: of the wrong digits the model wrote from a patched right "
                     f"neighbour (canvas patching above), {rate_text(cor)} are back to the unpatched answer when the "
                     f"run ends: once the neighbour it read is right again, the model overwrites the digit it drafted "
                     f"from it.")
    return lines


def _verdict(numbers) -> list[str]:
    ar = numbers["records"].get(AR)
    default = numbers["records"][numbers["settings"][0]]
    lines = []
    if num(default["accuracy"]) < 0.5:
        lines.append(f"- **The diffusion model has not learned the task** (accuracy {f3(default['accuracy'])} under the "
                     "default sampler): the statements below describe a model that does not compose the maps.")
    for name in numbers["settings"]:
        lines += _order_lines(numbers, name, ar)
        lines += _context_lines(numbers, name)
    if ar:
        a = numbers["iia"].get(AR, {})
        lines.append(f"- **AR twin**: accuracy {f3(ar['accuracy'])}: it must write c0, all ten maps applied to s, in "
                     f"its first forward pass, and then each digit follows from the one before (c_j+1 = o_j^-1(c_j)); "
                     f"it commits left to right by construction (mean rho {f3(ar['commit']['mean_rho'])})"
                     + (f"; pairs it answers correctly: {a['pairs_kept']}." if "pairs_kept" in a
                        else f"; {a.get('error', 'no IIA')}."))
    return lines


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    iia_rows = numbers["iia_rows"]
    settings = "; ".join(f"`{k}`: " + ", ".join(f"{a}={b}" for a, b in v.items())
                         for k, v in numbers["settings_kwargs"].items())
    lines = [
        f"Models: the zoo's `compose-diffusion` (DiffusionGemma, 2 layers, canvas {numbers['canvas_length']}: ten "
        "digits and EOS) and its AR twin `compose-ar` (same size and data), on held-out problems of the compose "
        "task: ten maps o0…o9 of the digits ('+' adds one mod 10; '#', '>', '?' are fixed scrambles) and a start "
        "digit s; answer digit j is c_j = (o_j ∘ … ∘ o_9)(s), so c9 is one map from s and each digit to its left "
        f"one map from its right neighbour. {numbers['n_record_prompts']} prompts for the records, "
        f"{numbers['n_causal_prompts']} (base, source) pairs for canvas patching, {numbers['n_pairs']} pairs with "
        f"different c6 for IIA. Sampler settings: {settings}. Definitions: docs/case_studies.md; the hypothesis: "
        "case_studies/compose/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_verdict(numbers),
        "",
        "## Training (from the models' recipe.json)",
        "",
        *training_lines(numbers),
        "",
        "## Commit order (non-chronological reasoning)",
        "",
        *_record_rows(numbers),
        *probe_section(numbers),
        "",
        "Commit step (`phenomena.commit_order`, by the argmax canvas, EOS excluded): the step after which the "
        "position no longer changes. rho: Spearman correlation of commit step with position per row (-1 = right to "
        "left), mean over rows whose digits did not all commit at once, percentile-bootstrap 95% interval. Right to "
        "left: no digit commits before the one to its right, and not all at once (Wilson interval). Random order: "
        "each row's commit steps assigned to its positions in 200 random orders, averaged per row.",
        "",
        *[f"![commit](commit_order_{slug(name)}.png)" for name in numbers["settings"]],
        "",
        "## One forward pass is not enough",
        "",
        "Step-0 argmax correct per position (what the first denoising step would emit; the same under every sampler "
        "setting; chance 0.1). c_j needs 10 - j maps applied in turn from the prompt.",
        "",
        *_step0_rows(numbers),
        "",
        "## Who reads whose draft: canvas patching",
        "",
        "Every canvas position q at each of the first steps, patched (the token the decoder reads and the "
        "self-conditioning logits there) from a run on another problem (`phenomena.canvas_flips`; both runs replay "
        "the same sampler noise). Rates pool (step, q, row) events where the patch changed the input, over answer "
        "digits p; bootstrap 95% intervals over rows. Read at the patched step: the argmax that step emits (the "
        "draft used as context right away); read at the emitted answer: after every later step had its say.",
        "",
        *_causal_rows(numbers),
        "",
        *[f"![flips](canvas_flips_step_{slug(name)}.png) ![flips](canvas_flips_final_{slug(name)}.png)"
          for name in numbers["causal"]],
        "",
        "## The digits are read off the drafted suffix: interchange interventions",
        "",
        "Sources share the base's maps and start from another digit, so their drafted states are a consistent "
        "state of the base's own chain. The drafted suffix c6…c9 is patched from the source: the canvas tokens the "
        "decoder reads at positions 6-9 (`canvas`), the self-conditioning logits there (`selfcond`), both, or the "
        "residual after block 0 there (`L0`), at every step (`all`). `/next`: the emitted c5 must be o5(c6_src); "
        "`/chain`: every digit left of position 6 must be the source's. `c6@both:all/...`: position 6 alone (one "
        "drafted digit that its unpatched right neighbour contradicts). `cJ@both:all@posJ-9`: every link's suffix "
        "(compared on digit J - 1). Random sites: the same number of sites at random positions and steps. AR twin: "
        "its pairs are drawn from held-out problems it answers correctly "
        f"({numbers['ar_pool']['correct']}/{numbers['ar_pool']['n']}).",
        "",
        *[f"- {name}: {r['error']}" + (f" ({r['dropped']} of {numbers['n_pairs']} pairs dropped)" if "dropped" in r else "")
          for name, r in numbers["iia"].items() if "error" in r],
        "",
        iia_table(iia_rows) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "![iia](iia.png)" if iia_rows else "",
        "",
        "Step k -> k+1: the drafted c8 c9 (written at step 0) patched at step 1 only, read off the argmax canvas right "
        "after step 1 rather than at the end; controls: the same two-position patch at positions 2-3 and 4-5.",
        "",
        *_step_rows(numbers),
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "HEADLINE", "STEP_HEADLINE", "SINGLE", "AR", "render"]

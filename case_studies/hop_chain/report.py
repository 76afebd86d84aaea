"""`render(numbers) -> str`: the hop-chain case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.chain_common import training_lines
from case_studies.common_report import (as_json, f3, interpretation_head, interval, isnan, num, probe_section, qualify,
                                        rate_text, side, slug)
from dgt_interp.studies import iia_table

TITLE = "Case study: hop chain — non-chronological and intermediate-context reasoning"
HEADLINE = "h1@canvas:step1/next"  # the hypothesis the findings quote (`hypothesis.h1_at("canvas", "step1")`)
AR = "AR twin (greedy)"


def _record_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | mean rho (commit step vs position) [95% CI] | "
           "random order: mean rho [95% CI] | strictly right to left [95% CI] | random order: right to left [95% CI] | "
           "all at once | mean commit step h3 / h2 / h1 |", "|" + "---|" * 10]
    for name, r in numbers["records"].items():
        c, ro, m = r["commit"], r["random_order"], r["mean_commit_step"]
        kind = "AR twin" if name == AR else "diffusion"
        out.append(f"| {name} | {kind} | {f3(r['accuracy'])} | {f3(c['mean_steps'], 2)} | "
                   f"{interval(c['mean_rho'], c['ci95_rho'], 3)} | {interval(ro['mean_rho'], ro['ci95_rho'], 3)} | "
                   f"{rate_text(r['right_to_left'])} | "
                   f"{interval(ro['fraction_right_to_left'], ro['ci95_right_to_left'], 3)} | "
                   f"{f3(r['all_at_once']['rate'])} | {f3(m['h3'], 2)} / {f3(m['h2'], 2)} / {f3(m['h1'], 2)} |")
    return out


def _step0_rows(numbers) -> list[str]:
    out = ["| setting | measure | h1 = f(x) (1 lookup) | h2 = f(f(x)) (2 lookups) | h3 (3 lookups) |",
           "|---|---|---|---|---|"]
    for name, r in numbers["records"].items():
        if "step0_argmax" in r:
            for key, label in (("step0_argmax", "step-0 argmax correct"),
                               ("query_copy", "writing the query x would be correct"),
                               ("step0_equals_query", "step-0 argmax is the query x")):
                s = r[key]
                out.append(f"| {name} | {label} | {rate_text(s['h1'])} | {rate_text(s['h2'])} | {rate_text(s['h3'])} |")
            break  # step 0 does not depend on the sampler setting
    return out


def _step_rows(numbers) -> list[str]:
    if not numbers["step_effect"]:
        return ["(not measured: the diffusion model answered too few pairs correctly unpatched, see the IIA section)"]
    out = ["| setting | patched at step 1 | argmax at position 1 after step 1 = f_base(h1_src) [95% CI] |",
           "|---|---|---|"]
    for name, e in numbers["step_effect"].items():
        for k, r in e.items():
            label = "nothing (unpatched base)" if k == "unpatched" else f"`{k}`"
            out.append(f"| {name} | {label} | {rate_text(r)} |")
    return out


def _verdict(numbers) -> list[str]:
    lines = []
    ar = numbers["records"].get(AR)
    default = numbers["records"][numbers["settings"][0]]
    if num(default["accuracy"]) < 0.5:
        lines.append(f"- **The diffusion model has not learned the task** (accuracy {f3(default['accuracy'])} under the "
                     "default sampler): the statements below describe a model that does not chase the pointers, so "
                     "they neither show nor refute non-chronological or intermediate-context reasoning on this task.")
    for name in numbers["settings"]:
        r = numbers["records"][name]
        c, ro = r["commit"], r["random_order"]
        rtl = r["right_to_left"]
        n_rows = f"{c['rows_with_order']} rows with an order"
        order = ("right to left (mean rho's 95% interval below 0, the random-order baseline's "
                 f"{f3(ro['mean_rho'])} and the AR twin's {f3(ar['commit']['mean_rho']) if ar else 'n/a'})")
        where = side(c["ci95_rho"], 0.0)
        claim = (qualify(numbers, n_rows, f"the answer commits {order}") if where == "below" else
                 qualify(numbers, n_rows, "the answer commits left to right") if where == "above" else
                 f"inconclusive at this n ({n_rows}: the 95% interval of the mean rho includes 0)")
        above_random = side(rtl["ci95"], num(ro["fraction_right_to_left"])) == "above"
        lines.append(f"- **Non-chronological order, {name}** ({f3(c['mean_steps'], 2)} steps, accuracy "
                     f"{f3(r['accuracy'])}): mean rho {interval(c['mean_rho'], c['ci95_rho'], 3)}: {claim}. Strictly "
                     f"right to left in {rate_text(rtl)} of rows vs {f3(ro['fraction_right_to_left'])} under random order"
                     + (" (95% interval above it)." if above_random else " (95% interval not above it)."))
        if "step0_argmax" in r:
            s, q, e = r["step0_argmax"], r["query_copy"], r["step0_equals_query"]
            lines.append(f"  One forward pass: the step-0 argmax is right for h1 in {f3(s['h1']['rate'])}, for h2 in "
                         f"{f3(s['h2']['rate'])} and for h3 in {f3(s['h3']['rate'])} of rows (chance "
                         f"{f3(numbers['chance'])}; writing the query x itself would be right in {f3(q['h1']['rate'])} / "
                         f"{f3(q['h2']['rate'])} / {f3(q['h3']['rate'])}, and the step-0 argmax is x in "
                         f"{f3(e['h1']['rate'])} / {f3(e['h2']['rate'])} / {f3(e['h3']['rate'])}).")
        iia = numbers["iia"].get(name, {})
        if "hypotheses" in iia and HEADLINE in iia["hypotheses"]:
            h = iia["hypotheses"][HEADLINE]
            rnd = iia["random_sites"]["mean_iia_informative"]
            ctrl = [v["iia_informative"] for k, v in iia["hypotheses"].items() if "@pos" in k and ":step1" in k]
            lo = num(h["ci95_informative"][0])
            best_ctrl = max((num(x) for x in ctrl), default=float("nan"))
            n = f"{h['n_informative']} pairs"
            claim = (qualify(numbers, n, "h2 is computed from the drafted h1 (intermediate-context reasoning)")
                     if lo > max(num(rnd), best_ctrl if not isnan(best_ctrl) else 0.0) else
                     f"not shown at this n ({n}: the 95% interval does not clear the random sites and the position "
                     "controls)")
            lines.append(f"  Causal: patching the drafted h1 (canvas token at position 2, step 1) from a source with "
                         f"another h1 makes the emitted h2 = f_base(h1_src) in {f3(h['iia_informative'])} "
                         f"[{f3(h['ci95_informative'][0])}, {f3(h['ci95_informative'][1])}] of pairs; random sites "
                         f"{f3(rnd)}, the same patch at the other positions at most {f3(best_ctrl)}: {claim}.")
        e = numbers["step_effect"].get(name)
        if e:
            lines.append(f"  Step k -> k+1: after that patch, position 1's argmax right after step 1 is already "
                         f"f_base(h1_src) in {f3(e[HEADLINE]['rate'])} of pairs (unpatched {f3(e['unpatched']['rate'])}).")
    if ar:
        a = numbers["iia"].get(AR, {})
        h = a.get("hypotheses", {}).get("h1@L0:all/next")
        lines.append(f"- **AR twin**: accuracy {f3(ar['accuracy'])} (it must write h3, three lookups, in its first "
                     f"forward pass); commits left to right by construction (mean rho {f3(ar['commit']['mean_rho'])})"
                     + (f"; IIA of h1 at its block-0 residual where it writes h3: {f3(h['iia_informative'])} "
                        f"(n = {h['n_informative']})." if h else f"; {a.get('error', 'no IIA')}."))
    return lines


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    iia_rows = numbers["iia_rows"]
    settings = "; ".join(f"`{k}`: " + ", ".join(f"{a}={b}" for a, b in v.items())
                         for k, v in numbers["settings_kwargs"].items())
    lines = [
        f"Models: the zoo's `hop_chain-diffusion` (DiffusionGemma, 2 layers, canvas {numbers['canvas_length']}: the "
        "three digits, EOS, padding) and its AR twin `hop_chain-ar` (same size and data), on held-out permutations of the hop_chain task: a permutation f of the digits 0-5 "
        "written as pairs, a query x, answer f(f(f(x))) f(f(x)) f(x) (the last hop first, so f(x) is the rightmost "
        f"digit). {numbers['n_record_prompts']} prompts for the records, {numbers['n_pairs']} (base, source) pairs "
        f"with different f(x) for IIA. Sampler settings: {settings}. Definitions: docs/case_studies.md; the "
        "hypothesis: case_studies/hop_chain/hypothesis.py.",
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
        "left), mean over rows whose digits did not all commit at once, percentile-bootstrap 95% interval. Strictly "
        "right to left: h1 commits before h2, h2 before h3 (Wilson interval). Random order: each row's commit "
        "steps assigned to the three positions in all six orders, averaged per row.",
        "",
        *[f"![commit](commit_order_{slug(name)}.png)" for name in numbers["settings"]],
        "",
        "## One forward pass is not enough",
        "",
        "Step-0 argmax per position (what the first denoising step would emit; the same under every sampler "
        f"setting): correct rate with its Wilson interval; chance is {f3(numbers['chance'])}. For comparison, how "
        "often the query x itself is the right digit (f^k(x) = x when x's cycle length divides k) and how often the "
        "step-0 argmax is x: a model that copies the query scores above chance at h2 and h3 without any lookup.",
        "",
        *_step0_rows(numbers),
        "",
        "## h2 is read off the drafted h1: interchange interventions",
        "",
        "h1 = f(x) is patched where it is drafted, from a source problem with another f(x): the canvas token the "
        "decoder reads at position 2 (`canvas`), the self-conditioning logits there (`selfcond`), both, or the "
        "residual after block 0 there (`L0`), at step 1 only (`step1`: the draft written at step 0, read at step 1) "
        "or at every step (`all`). `/next`: the emitted h2 must be f_base(h1_src) (f is a permutation, so every pair "
        "is informative). Controls `@posP`: both channels at another canvas position P at step 1. Random sites: "
        "the same number of sites at random positions and steps. AR twin: the token at position 2 is read after h2 "
        "and h3 are written (IIA 0 by construction), and `L0` aligns h1 to the residual after block 0 where it "
        "writes h3; its pairs are drawn from held-out problems it answers correctly "
        f"({numbers['ar_pool']['correct']}/{numbers['ar_pool']['n']}).",
        "",
        *[f"- {name}: {r['error']}" + (f" ({r['dropped']} of {numbers['n_pairs']} pairs dropped)" if "dropped" in r else "")
          for name, r in numbers["iia"].items() if "error" in r],
        "",
        iia_table(iia_rows) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "![iia](iia.png)" if iia_rows else "",
        "",
        "Step k -> k+1: the same patches, read off the argmax canvas right after step 1 rather than at the end.",
        "",
        *_step_rows(numbers),
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "HEADLINE", "render"]

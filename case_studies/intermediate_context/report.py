"""`render(numbers) -> str`: the intermediate-context case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both.
"""

from __future__ import annotations

from case_studies.common_report import (as_json, f3, figure_links, interpretation_head, num, probe_section, qualify,
                                        slug)
from dgt_interp.studies import iia_table

from .hypothesis import list_at

TITLE = "Case study: intermediate-context reasoning — is the count read off the drafted list?"
HEADLINE = list_at("both", "all", "count").name  # the hypothesis the findings quote


def _record_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | count accuracy | mean steps | rows with a wrong count drafted | "
           "of those, count corrected | corrected with the list already final | overwritten drafts (kept) | "
           "count commit step | list commit step | count commits after the list |", "|" + "---|" * 12]
    for name, r in numbers["records"].items():
        t, d = r["count_trace"], r["drafts"]
        kind = "AR twin" if name.startswith("AR") else "diffusion"
        out.append(f"| {name} | {kind} | {num(r['accuracy']):.3f} | {num(r['count_accuracy']):.3f} | {num(r['mean_steps']):.1f} | "
                   f"{t['rows_with_a_wrong_count_draft']}/{t['rows']} | {t['rows_count_corrected']} | "
                   f"{t['corrected_with_list_already_final']} | {d['n_drafts']} ({d['n_in_canvas']}) | "
                   f"{f3(r['count_commit_step'])} | {f3(r['list_commit_step'])} | "
                   f"{f3(r['fraction_count_commits_after_list'])} |")
    return out


def _causal_rows(numbers) -> list[str]:
    out = ["| setting | steps patched (of base steps) | list → count | count → list | later → earlier | "
           "earlier → later | kept drafts tested | drafts whose ablation changes the answer | list drafts tested | "
           "list drafts whose ablation changes the count |", "|" + "---|" * 10]
    for name, c in numbers["causal"].items():
        d = c["drafts"]
        out.append(f"| {name} | {c['steps_patched']} ({c['base_steps']}) | {f3(c['list_to_count'])} | "
                   f"{f3(c['count_to_list'])} | {f3(c['later_on_earlier'])} | {f3(c['earlier_on_later'])} | "
                   f"{d['n_drafts_tested']} | {f3(d['fraction_answer_changed'])} | {c['list_drafts_tested']} | "
                   f"{c['list_drafts_whose_ablation_changes_the_count']} |")
    return out


def _verdict(numbers, default, slow, headline) -> list[str]:
    """Plain statements, each with its numbers, per setting and for the AR twin."""
    lines = []
    for name in dict.fromkeys([default, slow]):
        r = numbers["records"][name]
        t = r["count_trace"]
        lines.append(f"- **{name}** ({num(r['mean_steps']):.1f} steps, accuracy {num(r['accuracy']):.3f}, count accuracy "
                     f"{num(r['count_accuracy']):.3f}): a wrong count is drafted in {t['rows_with_a_wrong_count_draft']}/"
                     f"{t['rows']} rows and corrected in {t['rows_count_corrected']} "
                     f"({t['corrected_with_list_already_final']} with the drafted list already final at the step before); "
                     f"the count commits after the list in {f3(r['fraction_count_commits_after_list'])} of rows.")
        if name in numbers["causal"]:
            c = numbers["causal"][name]
            lines.append(f"  Resample-ablating a list position flips the count at rate {f3(c['list_to_count'])} "
                         f"(count → list {f3(c['count_to_list'])}); {c['list_drafts_whose_ablation_changes_the_count']}"
                         f"/{c['list_drafts_tested']} kept list drafts change the count when ablated.")
        if name in numbers["iia"] and "hypotheses" in numbers["iia"][name]:
            h = numbers["iia"][name]["hypotheses"][headline]
            rnd = numbers["iia"][name]["random_sites"]["mean_iia_informative"]
            lines.append(f"  IIA of {headline}: {f3(h['iia_informative'])} (95% CI {f3(h['ci95_informative'][0])}–"
                         f"{f3(h['ci95_informative'][1])}, n={h['n_informative']}); random sites {f3(rnd)}: "
                         + _read_off(numbers, h) + ".")
    a = numbers["iia"].get("AR twin (greedy)", {})
    if "hypotheses" in a:
        h = a["hypotheses"][headline]
        lines.append(f"- **AR twin**: count accuracy {f3(numbers['records']['AR twin (greedy)']['count_accuracy'])}; "
                     f"IIA of the same hypothesis {f3(h['iia_informative'])} (n={h['n_informative']}): the list is "
                     "written after the count, so it cannot change it.")
    return lines


def _read_off(numbers: dict, h: dict) -> str:
    """Whether the emitted count is read off the drafted list, from the 95% interval of its IIA (vs 0.5)."""
    lo, hi = (num(x) for x in h["ci95_informative"])
    n = f"{h['n_informative']} pairs"
    if lo > 0.5:
        return qualify(numbers, n, "the count is read off the drafted list (intermediate-context reasoning)")
    if hi < 0.5:
        return qualify(numbers, n, "the count is not read off the drafted list (the 95% interval lies below 0.5)")
    return f"inconclusive at this n ({n}: the 95% interval includes 0.5)"


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    default, slow = numbers["settings"][0], numbers["settings"][-1]
    headline, iia_rows = HEADLINE, numbers["iia_rows"]
    lines = [
        "Models: the zoo's `count-diffusion` (DiffusionGemma, canvas 11) and its AR twin `count-ar`, on the count "
        f"task ({numbers['n_record_prompts']} prompts for the records, {numbers['n_causal_prompts']} base prompts for "
        f"the canvas-patching sweeps, {numbers['n_pairs']} (base, source) pairs with different counts for IIA). "
        "Definitions: docs/case_studies.md; the hypothesis: case_studies/intermediate_context/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_verdict(numbers, default, slow, headline),
        "",
        "## Drafts and corrections by sampler setting",
        "",
        *_record_rows(numbers),
        *probe_section(numbers),
        "",
        "A wrong count draft: the argmax canvas holds another count at an intermediate step than the one emitted. "
        "Corrected: the emitted count is right. 'With the list already final': the drafted list (argmax, up to "
        "its EOS) equalled the emitted list at the step before the count settled. Commit step (argmax, EOS excluded): the "
        "step after which the position no longer changes; 'count commits after the list': the count's commit step is "
        "later than every list position's.",
        "",
        "![drafts](drafts_slow.png) ![commit](commit_order_slow.png)",
        "",
        "The row with the most wrong count drafts under the slowest setting (argmax canvas per step):",
        "",
        "![canvas](canvas_example.png)",
        "",
        "## Causal effect of drafted tokens",
        "",
        "Each input-canvas position at each step (up to the step limit shown) is resample-ablated from a run on "
        "another problem (same sampler noise). Flip rate = fraction of rows whose emitted token at p changes (max "
        "over steps); list → count = mean over list positions q ≥ 2 of the count's flip rate.",
        "",
        *_causal_rows(numbers),
        "",
        *figure_links([f"canvas_flips_{slug(name)}" for name in numbers["causal"]], "canvas_flips"),
        "",
        "## count := len(drafted list): interchange interventions",
        "",
        "The drafted list (canvas positions 2..10: its tokens and where its EOS lands) is patched from a source "
        "problem with another count: the canvas tokens the decoder reads there (`canvas`), the self-conditioning "
        "logits there (`selfcond`) or both, at every step (`all`) or only at step 1 (`step1`, the first step that "
        "reads a draft). `/count`: the emitted count must equal the source list's length; `/answer`: the whole "
        "answer must be the source's. Control `n@count-draft`: the same channels at the count position itself. "
        "Random sites: the same number of sites at random positions (and steps where the site has one). AR twin: "
        "the list tokens it reads (generation steps 3..), all after the count.",
        "",
        iia_table(iia_rows) if iia_rows else "(no IIA: the model answered no pair correctly)",
        "",
        "![iia](iia.png)" if iia_rows else "",
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "HEADLINE", "render"]

"""`render(numbers) -> str`: the sort case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists, digit keys are str); `render` gives the same text for both. The setting and class
names below are shared with `study.py` (which imports them from here).
"""

from __future__ import annotations

from case_studies.common_report import (as_json, ci, f3, figure_links, interpretation_head, interval, num, nz,
                                        probe_section, qualify, sci, slug, verdict)

TITLE = "Case study: sort — rank or successor, where, and in what order"
DEFAULT, TIGHT, MANY, HOT, GENTLE = ("default (eb=0.1)", "eb=1e-4", "eb=1e-4, no early stop",
                                     "eb=1e-4, T=1.6->1.2", "gentle (eb=0.02, T=1.0->0.5)")
POSITION_KINDS = ("unique digit", "repeated digit", "EOS")
RANK_CLASSES = ("smallest digit", "interior digit", "largest digit")


def _rho_ci(order: dict, fmt) -> str:
    """` [lo, hi]`: the bootstrap 95% interval of a mean rho (absent in older reports and with < 2 rows)."""
    c = order.get("ci95_rho")
    return f" [{fmt(c[0])}, {fmt(c[1])}]" if c and c[0] is not None else ""


def _pheno_row(name, kind, r, conf) -> str:
    ca, cs, ts, ss, dr = (r[k] for k in ("commit_argmax", "commit_sampler", "token_smearing", "sequence_smearing",
                                         "drafts"))
    fmt = (lambda x: "n/a" if x is None or x != x else f"{x:+.2f}")
    pk = ts["peak"]
    ent = (" / ".join(sci(conf["step0_entropy_by_rank"][k]["mean"]) for k in RANK_CLASSES) + " / "
           + sci(conf["step0_entropy_by_kind"]["EOS"]["mean"]) if conf else "–")
    return (f"| {name} | {kind} | {num(r['accuracy']):.2f} | {num(ca['mean_steps']):.1f} | "
            f"{f3(ca['fraction_committed_at_step0'], 2)} | {ca['rows_with_order']}/{ca['rows']} | "
            f"{cs['rows_with_order']}/{cs['rows']} | {fmt(cs['mean_rho'])}{_rho_ci(cs, fmt)} | {sci(pk['mass'])} (step {pk['step']}, "
            f"d={pk['offset']:+d}) | {f3(ss['fraction_steps_smeared'])} | {dr['n_drafts']} ({dr['n_in_canvas']} kept) "
            f"| {ent} |")


def _ar_smear_note(numbers: dict) -> str:
    """The AR twin's trajectory stores zero logits at positions not yet generated: their softmax is 1/V."""
    m = numbers["phenomena"]["AR twin (greedy)"]["token_smearing"]["peak"]["mass"]
    v = numbers.get("vocab_size")
    if v and abs(num(m) - 1 / v) < 1e-6:
        return (f" (The AR twin's peak, {sci(m)}, is 1/{v}: the uniform softmax of the zero logits its trajectory "
                "holds at positions not yet generated, not smearing.)")
    return f" AR twin: {sci(m)}."


def _extremes_sentence(numbers: dict) -> str:
    """Which order statistics the many-step sampler holds first, next to their step-0 entropies."""
    conf = numbers["confidence"].get(MANY)
    if not conf:
        return ""
    c = {k: num(x) for k, x in conf["commit_step_by_rank"].items()}
    e = {k: {**x, "mean": num(x["mean"])} for k, x in conf["step0_entropy_by_rank"].items()}
    ext = max(c["smallest digit"], c["largest digit"])
    if not (ext == ext and c["interior digit"] == c["interior digit"]):
        return ""
    return (f" With {MANY}, the sampler holds the smallest and the largest digit at mean step "
            f"{f3(c['smallest digit'], 2)} and {f3(c['largest digit'], 2)}, interior digits at "
            f"{f3(c['interior digit'], 2)}; their step-0 entropies are {sci(e['smallest digit']['mean'])}, "
            f"{sci(e['largest digit']['mean'])} and {sci(e['interior digit']['mean'])}"
            + (": the extreme order statistics are the most certain and are held first."
               if c["interior digit"] > ext and e["interior digit"]["mean"] > max(e["smallest digit"]["mean"],
                                                                               e["largest digit"]["mean"]) else "."))


def _presence(numbers: dict) -> list[str]:
    """Plain statements: does each phenomenon appear, under which setting, with the numbers."""
    ph = {k: v for k, v in numbers["phenomena"].items() if k != "AR twin (greedy)"}
    lines = []
    argmax_rows = {k: v["commit_argmax"]["rows_with_order"] for k, v in ph.items()}
    samp = {k: (v["commit_sampler"]["rows_with_order"], v["commit_sampler"]["mean_rho"],
                v["commit_sampler"].get("ci95_rho")) for k, v in ph.items()}
    rows = next(iter(ph.values()))["commit_argmax"]["rows"]
    step0 = min(num(v["commit_argmax"]["fraction_committed_at_step0"]) for v in ph.values())
    lines.append(
        "- **Non-chronological order of commits: "
        + ("absent from the model's own proposals" if max(argmax_rows.values()) == 0 else "present in some rows")
        + f".** In every setting the argmax canvas already holds the final answer at step 0 (fraction of answer "
        f"positions final at step 0 ≥ {f3(step0, 3)}; rows with any argmax order: "
        + ", ".join(f"{k}: {v}/{rows}" for k, v in argmax_rows.items())
        + "). What the *sampler* holds does show an order where the bound is tight: "
        + ", ".join(f"{k}: {n}/{rows} rows"
                    + (f", mean rho {interval(r, c)}, " + verdict(c, 0.0, n=n, numbers=numbers, what="rows", above="left to right",
                                                                 below="right to left") if n else "")
                    for k, (n, r, c) in samp.items())
        + " (mean Spearman rho with its bootstrap 95% interval over rows). That order follows the entropy ranking at step 0, not a sequence of computations: the model's argmax "
        "never changes." + _extremes_sentence(numbers))
    causal = numbers["causal"]
    loe = [c["positions"]["later_on_earlier"] for c in causal.values()]
    lines.append(
        "- **Later positions informing earlier ones: "
        + ("absent" if all(x is None or x != x or x == 0 for x in loe) else "present")
        + ".** Resample-ablating one canvas position at one step changes another position's final token with rate "
        + ", ".join(f"{k}: later→earlier {f3(c['positions']['later_on_earlier'])}, earlier→later "
                    f"{f3(c['positions']['earlier_on_later'])}, itself {f3(c['positions']['self'])}"
                    for k, c in causal.items()) + ".")
    peaks = {k: num(v["token_smearing"]["peak"]["mass"]) for k, v in ph.items()}
    lines.append(
        "- **Token smearing: " + ("absent" if max(peaks.values()) < 0.05 else "present") + ".** Largest mean "
        "probability of a final digit one or two positions away from where it ends up (only where the neighbour "
        "holds a different digit, i.e. at run boundaries — where a count-based sorter would be unsure): "
        + ", ".join(f"{k}: {sci(m)}" for k, m in peaks.items()) + "."
        + _ar_smear_note(numbers))
    seq = {k: v["sequence_smearing"]["fraction_steps_smeared"] for k, v in ph.items()}
    lines.append("- **Sequence smearing: " + ("absent" if max(nz(x) for x in seq.values()) <= 0 else "present")
                 + ".** Fraction of steps whose argmax canvas aligns best with the final one at a shift: "
                 + ", ".join(f"{k}: {f3(x)}" for k, x in seq.items()) + ".")
    drafts = {k: (v["drafts"]["n_drafts"], v["drafts"]["n_in_canvas"]) for k, v in ph.items()}
    tested = {k: c["drafts"]["n_drafts_tested"] for k, c in causal.items()}
    lines.append(
        "- **Intermediate-context reasoning: " + ("absent" if sum(d[0] for d in drafts.values()) == 0 else
                                                   "drafts occur") + ".** Overwritten drafts (kept in the canvas): "
        + ", ".join(f"{k}: {n} ({m})" for k, (n, m) in drafts.items()) + "; kept drafts whose ablation was tested: "
        + ", ".join(f"{k}: {n}" for k, n in tested.items())
        + ". The IIA below shows the same from the other side: the canvas token and the self-conditioning "
        "channel at a position carry nothing the model uses for that position's digit.")
    return lines


def _held(x: dict) -> str:
    """How much of a variable a site holds, from its IIA's Wilson interval."""
    lo, hi = (num(v) for v in x["ci95"])
    return "holds it" if lo >= 0.5 else "holds none of it" if num(x["iia"]) == 0 else "holds little of it" if hi < 0.5 \
        else "holds part of it"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _findings(numbers: dict) -> list[str]:
    """The alignment findings in words; every claim is conditioned on the numbers it quotes."""
    s = numbers["summary"]
    out = []
    for name, e in s["iia"].items():
        a = e["alignments"]
        layers = ", ".join(f"L{k} {ci(a[f'L{k}:all']['digit'])}" for k in range(4))
        first = e["earliest_layer_with_ci_above_half"]
        out.append(
            f"- **Where o_i lives ({name}).** Held-out IIA of o_i @ position i, all steps, digit i: {layers}; "
            f"best held-out alignment {e['best_held_out']}; random sites of the same shape "
            f"{f3(e['random_sites']['digit']['mean'])}. "
            + (f"The digit is localised at its own canvas position from {first.split(':')[0]} on (95% CI above 0.5); "
               if first else "No layer localises the digit at its position (no CI above 0.5); ")
            + f"the self-conditioning channel {_held(a['selfcond:all']['digit'])} "
            f"({ci(a['selfcond:all']['digit'])}) and the canvas token {_held(a['canvas:all']['digit'])} "
            f"({ci(a['canvas:all']['digit'])}).")
        d = e["step_diagnostics"]
        if "first" in d:
            f1, lt = d["first"], d.get("later", {})
            out.append(
                f"- **Which step decides ({name}).** Patching o_i at L3 at step 0 only: IIA "
                f"{ci(a['L3:first']['digit'])}; the sampler kept the source digit in the step-1 canvas in "
                f"{f3(f1['kept_in_canvas_at_step1'], 2)} of pairs, yet the emitted digit is the base's in "
                f"{f3(f1['final_is_base'], 2)}: "
                + ("later steps recompute the digit from the prompt instead of reading the kept token or the "
                   "self-conditioning logits. " if num(f1["final_is_base"]) >= 0.5 else "the step-0 decision persists. ")
                + f"Patching steps 1.. only: IIA {ci(a['L3:later']['digit'])}"
                + (f"; patched runs take {f3(lt['mean_steps'], 1)} steps against {f3(d['base_mean_steps'], 1)} "
                   "unpatched" if lt else "")
                + (" — the patch makes step 1 disagree with step 0, so adaptive stopping runs extra steps that the "
                   "patch (limited to the steps the unpatched runs reached) does not reach, and they restore the "
                   "base digit." if lt and num(lt["mean_steps"]) > num(d["base_mean_steps"]) + 0.5
                   and num(lt["final_is_base"]) >= 0.5
                   else ".")
                + (f" Patching L2 at all steps: runs take {f3(d['L2:all']['mean_steps'], 1)} steps and emit the "
                   f"source digit in {f3(d['L2:all']['final_is_source'], 2)}, the base digit in "
                   f"{f3(d['L2:all']['final_is_base'], 2)}." if "L2:all" in d else ""))
    default = s["iia"][DEFAULT]
    ar = default.get("ar_twin")
    if ar:
        out.append(
            "- **AR twin.** o_i at the position that predicts digit i: "
            + ", ".join(f"{k} {ci(v['digit'])}" for k, v in ar.items())
            + f"; random sites {f3(default['ar_random_sites']['digit']['mean'])}. After patching o_i at L3, digit "
            f"i+1 is what the successor model predicts (the successor of the patched digit) in "
            f"{ci(ar['L3']['next_successor'])} of pairs and the base's digit i+1 (rank model) in "
            f"{ci(ar['L3']['next_rank'])}; whole answer: successor {ci(ar['L3']['answer_successor'])}, rank "
            f"{ci(ar['L3']['answer'])}. On DiffusionGemma the same comparison gives digit i+1: successor "
            f"{ci(default['alignments']['L3:all']['next_successor'])}, rank "
            f"{ci(default['alignments']['L3:all']['next_rank'])}; whole answer: successor "
            f"{ci(default['alignments']['L3:all']['answer_successor'])}, rank "
            f"{ci(default['alignments']['L3:all']['answer'])}.")
    pt = s["previous_token"]
    if "AR twin" in pt and DEFAULT in pt:
        ar_p, d_p = pt["AR twin"], pt[DEFAULT]
        verdicts = []
        if num(d_p["rank_digit"]["ci95"][0]) >= 0.5 and num(d_p["successor_digit"]["ci95"][1]) < 0.5:
            verdicts.append(qualify(numbers, f"{d_p['rank_digit']['n']} pairs",
                                    "DiffusionGemma behaves as the rank model: digit i ignores the token before it"))
        if num(ar_p["successor_digit"]["ci95"][0]) >= 0.5 and num(ar_p["rank_digit"]["ci95"][1]) < 0.5:
            verdicts.append(qualify(numbers, f"{ar_p['rank_digit']['n']} pairs",
                                    "the AR twin reads the digit it just wrote and emits its successor"))
        out.append(
            f"- **Rank or successor.** Patching the token read before digit i: AR twin, digit i is the successor of "
            f"the patched token in {ci(ar_p['successor_digit'])} of pairs and unchanged in {ci(ar_p['rank_digit'])}; "
            f"DiffusionGemma ({DEFAULT}): successor {ci(d_p['successor_digit'])}, unchanged "
            f"{ci(d_p['rank_digit'])}. " + (_sentence("; ".join(verdicts)) if verdicts else
                                              "Neither model is separated from the other at this sample size."))
    return out


def _baseline_cells(r: dict) -> str:
    cells = [f"{f3(r[k]['mean'])} ({f3(r[k]['min'])}–{f3(r[k]['max'])})" for k in ("digit", "answer")]
    return " | ".join(cells + ["–"] * 3)


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    s = numbers["summary"]
    ph, conf = numbers["phenomena"], numbers["confidence"]
    table = ["| setting | model | accuracy | mean steps | answer positions final at step 0 (argmax) | rows with an "
             "argmax order | rows with a sampler order | mean rho (sampler) [95% CI] | peak token-smear mass | fraction of "
             "steps sequence-smeared | overwritten drafts | step-0 entropy: smallest / interior / largest digit / EOS |",
             "|" + "---|" * 12]
    for name in numbers["settings"]:
        table.append(_pheno_row(name, "diffusion", ph[name], conf[name]))
    table.append(_pheno_row("greedy", "AR twin", ph["AR twin (greedy)"], None))
    groups = (("rank", RANK_CLASSES), ("kind", POSITION_KINDS[:2]))
    commit_kind = ["| setting | " + " | ".join(k for _, ks in groups for k in ks) + " |", "|---|" + "---|" * 5]
    for name in numbers["settings"]:
        commit_kind.append(f"| {name} | " + " | ".join(f3(conf[name][f"commit_step_by_{g}"][k], 2)
                                                       for g, ks in groups for k in ks) + " |")

    iia_lines = []
    for name, e in s["iia"].items():
        labels = list(e["alignments"])
        if not iia_lines:
            iia_lines = ["| setting | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        iia_lines.append(f"| {name} (digit i) | " + " | ".join(f3(e["alignments"][lab]["digit"]["iia"], 2)
                                                            for lab in labels) + " |")
        iia_lines.append(f"| {name} (answer) | " + " | ".join(f3(e["alignments"][lab]["answer"]["iia"], 2)
                                                           for lab in labels) + " |")
    headline = ["| alignment / baseline | setting | model | held-out IIA, digit i [95% CI] (hits/pairs) | "
                "whole answer, rank model | whole answer, successor model | digit i+1, rank model | digit i+1, successor "
                "model |", "|---|---|---|---|---|---|---|---|"]
    for name, e in s["iia"].items():
        for lab in dict.fromkeys([e["best_held_out"], "L2:all", "L3:first", "L3:later", "selfcond:all", "canvas:all"]):
            a = e["alignments"][lab]
            headline.append(f"| o_i @ {lab} | {name} | diffusion | {ci(a['digit'])} | {ci(a['answer'])} | "
                            f"{ci(a['answer_successor'])} | {ci(a['next_rank'])} | {ci(a['next_successor'])} |")
        r = e["random_sites"]
        headline.append(f"| random sites shaped like the selected alignment (mean of {r['digit']['draws']} draws, "
                        f"min–max) | {name} | diffusion | {_baseline_cells(r)} |")
        if "ar_twin" in e:
            for lab, a in e["ar_twin"].items():
                headline.append(f"| o_i @ {lab} (predicting position) | greedy | AR twin | {ci(a['digit'])} | "
                                f"{ci(a['answer'])} | {ci(a['answer_successor'])} | {ci(a['next_rank'])} | "
                                f"{ci(a['next_successor'])} |")
            r = e["ar_random_sites"]
            headline.append(f"| random sites (AR) (mean of {r['digit']['draws']} draws, min–max) | greedy | AR twin | "
                            f"{_baseline_cells(r)} |")
    per_digit = ["| setting | digit i | selected on the selection half | " + " | ".join(
        next(iter(s["iia"].values()))["alignments"]) + " |", "|---|---|---|" + "---|" * len(next(iter(s["iia"].values()))["alignments"])]
    for name, e in numbers["iia"].items():
        for i, d in e["digits"].items():
            per_digit.append(f"| {name} | {i} | {d['selected']} | " + " | ".join(
                f"{f3(r['iia_informative'], 2)}" for r in d["held_out_digit"]) + " |")
    prev = ["| model / setting | successor model, digit i | successor model, whole answer | rank model (unchanged), "
            "digit i | rank model (unchanged), whole answer |", "|---|---|---|---|---|"]
    for name, p in s["previous_token"].items():
        prev.append(f"| {name} | " + " | ".join(ci(p[k]) for k in ("successor_digit", "successor_answer", "rank_digit",
                                                                     "rank_answer")) + " |")
    ex = numbers["previous_token"].get("AR twin", {})
    examples = [f"`{x['base']}` → `{x['base_answer']}`, source answer `{x['source_answer']}`, patched: "
                f"`{x['patched']}`" for per in ex.values() for x in per["examples"][:3]]

    lines = [
        "Models: the zoo's `sort-diffusion` (DiffusionGemma) and its AR twin `sort-ar`, on the sort task (2–7 digits, "
        f"'3142>' → '1234'). {numbers['n_phenomena_prompts']} prompts for the phenomena, {numbers['n_causal_prompts']} "
        f"for canvas patching, {numbers['n_pairs']} (base, source) pairs per digit for IIA (half select the alignment, "
        f"half score it), digits i = {numbers['digits']} for the rank model, {numbers['previous_token_digits']} for "
        "the previous-token test. Definitions: docs/case_studies.md; the hypotheses: case_studies/sort/hypothesis.py.",
        "",
        *interpretation_head(numbers),
        *_findings(numbers),
        "",
        *_presence(numbers),
        "",
        "## Phenomena by sampler setting",
        "",
        *table,
        *probe_section(numbers),
        "",
        "rho = Spearman correlation of commit step with position over the answer digits (+1 left to right). "
        "Entropies are means over answer positions at the canvas's first step (nats).",
        "",
        "Mean sampler commit step by kind of answer digit (which order statistic it is; a digit that occurs once "
        "vs. a digit of a run):",
        "",
        *commit_kind,
        "",
        "![commit order](commit_order_many.png) ![argmax](commit_order_argmax_many.png)",
        "",
        "![AR](commit_order_ar.png) ![example](commit_heatmap_many.png)",
        "",
        "![token smearing](token_smearing_hot.png) ![sequence smearing](sequence_smearing_many.png)",
        "",
        "![confidence](confidence_default.png)",
        "",
        "## Causal effects of canvas positions and drafts",
        "",
        "| setting | steps patched | later → earlier | earlier → later | on itself | kept drafts tested | fraction of "
        "drafts whose ablation changes the answer |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {len(c['positions']['steps'])} | {f3(c['positions']['later_on_earlier'])} | "
          f"{f3(c['positions']['earlier_on_later'])} | {f3(c['positions']['self'])} | {c['drafts']['n_drafts_tested']} | "
          f"{f3(c['drafts']['fraction_answer_changed'])} |" for k, c in numbers["causal"].items()],
        "",
        *figure_links([f"canvas_flips_{slug(name)}" for name in numbers["causal"]], "canvas_flips"),
        "",
        "## The rank model: where does o_i live?",
        "",
        "Hypothesis o_i @ site: the i-th smallest digit is held at canvas position i by the site: `Lk` = the residual "
        "after block k, `selfcond` = the self-conditioning logits entering the step, `canvas` = the token embedding "
        "the decoder reads; `:all` = every denoising step, `:first` = step 0 only, `:later` = steps 1.. (only the "
        "steps both unpatched runs reached: a patched run that goes on longer runs its extra steps unpatched). "
        "Counterfactual: the base answer with digit i from the source (pairs of equal length whose digit i differs, "
        "so every pair is informative). `digit i` compares that digit, `answer` the whole output. Held-out IIA pooled "
        "over digits; random sites redraw the layer and position.",
        "",
        *headline,
        "",
        "Held-out IIA of every alignment (pooled over digits):",
        "",
        *iia_lines,
        "",
        "Per digit (held-out, digit i):",
        "",
        *per_digit,
        "",
        "![iia](iia_alignments.png)",
        "",
        "## Rank or successor: the previous-token test",
        "",
        "Patch the token read just before digit i (AR: the input embedding at generation step i; DiffusionGemma: the "
        "canvas token at position i-1, all steps) with the source's digit i-1. The successor model predicts digit i "
        "= the successor of the patched token in the base's digits, and the chain re-runs from there; the rank model "
        "predicts no change. Fractions over all pairs, pooled over digits, 95% Wilson CI.",
        "",
        *prev,
        "",
        *(["AR twin examples (first pairs): " + "; ".join(examples), ""] if examples else []),
        "![previous token](previous_token.png)",
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "DEFAULT", "TIGHT", "MANY", "HOT", "GENTLE", "POSITION_KINDS", "RANK_CLASSES", "render"]

"""`run(ctx)`: the smearing case study (count task: do list tokens smear, and does the count place them?).

1. Phenomena per sampler setting (`count_common.sampler_settings`: the zoo default, then settings that
   resolve the canvas over more steps), on DiffusionGemma and the AR twin: accuracy, steps, token
   smearing (`phenomena.token_smearing`), sequence smearing (`phenomena.sequence_smearing`), where
   the EOS is expected (`count_common.eos_smearing`: length uncertainty) and whether each intermediate
   canvas's written count matches the length of its drafted list (`count_common.count_trace`).
2. IIA of "the count decides where the list lands" (`hypothesis.count_at`): for each site of the
   count (residual after each block, the self-conditioning channel, the count token read), scored
   under three high-level models (independent / left-anchored / right-anchored), on the whole answer
   and on where EOS lands. Site chosen on a selection half of the pairs, scored on the other half,
   next to random sites of the same shape and the AR twin, per sampler setting.
Every number in the report is computed here; nothing is hard-coded.
"""

from __future__ import annotations

import random

from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline

from dgt_interp.studies import Report, StudyContext, iia_table
from dgt_interp.phenomena import token_smearing
from dgt_interp.tasks import EOS_ID

from case_studies.count_common import (
    count_trace,
    eos_smearing,
    offcentre_mass,
    f3,
    iia_figure,
    run_prompts,
    sample_problem,
    sampler_settings,
    slug,
)

from .hypothesis import count_at, smearing_pairs

# (model, compared on): the count itself, the list untouched (independent), EOS moved to 2 + n (left = right
# there), the list laid out from the start or the end (whatever count character was emitted). independent/length is left out: a patch that does
# nothing already keeps the base length, so no pair is informative for it.
COMBOS = (("independent", "count"), ("independent", "answer"), ("left", "length"), ("left", "list"),
          ("right", "list"))


def _phenomena(model, problems, seed, ar: bool, **gen) -> tuple:
    traj, _, det = run_prompts(model, problems, seed, **gen)
    src = "argmax" if ar else "probs"  # AR logits exist only where a token was written
    res = {"accuracy": det["accuracy"], "commit": det["commit_argmax"],
           "token_smearing": token_smearing(traj, eos_id=EOS_ID, source="argmax") if ar else det["token_smearing"],
           "sequence_smearing": det["sequence_smearing"],
           "eos_smearing": eos_smearing(traj, source=src),
           "count_trace": count_trace(traj, problems)}
    return traj, res


def _numbers(res) -> dict:
    out = {}
    for k, v in res.items():
        out[k] = v if isinstance(v, float) else v.summary() if k == "count_trace" else v.to_dict()
    out["token_smearing_robust"] = offcentre_mass(res["token_smearing"])
    return out


def _score_sites(runs, wheres):
    """{(where, model, compare): IIAResult} for every candidate site on `runs` (one patched run per site)."""
    hyps = {(w, m, c): count_at(w, m, c) for w in wheres for m, c in COMBOS}
    site_sets = [count_at(w).sites(runs.ctx) for w in wheres]
    outs = runs.outputs(site_sets, batch_size=32)
    res = {}
    for (w, m, c), h in hyps.items():
        o = outs[wheres.index(w)]
        res[(w, m, c)] = runs.score(h.name, h.sites(runs.ctx), o, expected_answers(h, runs.pairs), h)
    return res


def _nz(x: float) -> float:
    return -1.0 if x != x else x


def run(ctx: StudyContext) -> Report:
    quick = ctx.quick
    n_pheno = 8 if quick else 128
    n_pairs = 8 if quick else 96
    draws = 2 if quick else 4
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    n_layers = diff.config.get_text_config().num_hidden_layers
    wheres = ([n_layers // 2] if quick else list(range(n_layers))) + ["selfcond", "canvas"]
    settings = sampler_settings(quick)
    slow = list(settings)[-1]
    rng = random.Random(f"smearing-study:{ctx.seed}")
    problems = [sample_problem(rng, min_count=0) for _ in range(n_pheno)]
    numbers: dict = {"settings": list(settings), "n_phenomena_prompts": n_pheno, "n_pairs": n_pairs,
                     "phenomena": {}, "iia": {}}
    figures: dict = {}

    # 1. phenomena per sampler setting + the AR twin (greedy)
    results, trajs = {}, {}
    for name in ctx.progress(list(settings), desc="phenomena"):
        trajs[name], results[name] = _phenomena(diff, problems, ctx.seed, False, **settings[name])
        numbers["phenomena"][name] = _numbers(results[name])
    traj_ar, res_ar = _phenomena(ar, problems, ctx.seed, True, do_sample=False)
    numbers["phenomena"]["AR twin (greedy)"] = _numbers(res_ar)
    for name in (list(settings)[0], slow):
        r = results[name]
        figures[f"token_smearing_{slug(name)}"] = r["token_smearing"].figure(f"token smearing, {name}")
        figures[f"eos_smearing_{slug(name)}"] = r["eos_smearing"].figure(f"where the list ends (P(EOS)), {name}")
    figures["sequence_smearing_slow"] = results[slow]["sequence_smearing"].figure(f"sequence smearing, {slow}")
    figures["token_smearing_ar"] = res_ar["token_smearing"].figure("token smearing, AR twin (argmax)")
    from dgt_interp.viz import canvas_figure

    st = trajs[slow]
    longest = int(st.records["active"].sum(0).argmax())  # the row that took the most steps
    figures["canvas_example"] = canvas_figure(st, batch=longest)

    # 2. IIA of "the count decides where the list lands", per sampler setting
    pairs = smearing_pairs(n_pairs, seed=ctx.seed)
    half = len(pairs) // 2
    sel, held = pairs[:half], pairs[half:]
    iia_rows = []
    iia_settings = [list(settings)[0]] + ([] if quick else [slow])
    for name in ctx.progress(iia_settings, desc="IIA"):
        runs_sel = PairRuns(diff, sel, seed=ctx.seed, **settings[name])
        runs_held = PairRuns(diff, held, seed=ctx.seed, **settings[name])
        if not runs_sel.pairs or not runs_held.pairs:
            numbers["iia"][name] = {"error": "the model answered no pair correctly unpatched",
                                    "dropped": [runs_sel.dropped, runs_held.dropped]}
            continue
        s_sel, s_held = _score_sites(runs_sel, wheres), _score_sites(runs_held, wheres)
        # the site chosen on the selection half: where the count is held (the emitted count follows the patch),
        # then EOS following it; the last block is left out (its residual at position 0 *is* the count's logits)
        cands = [w for w in wheres if w != n_layers - 1]
        best = max(cands, key=lambda w: (_nz(s_sel[(w, "independent", "count")].iia_informative),
                                         _nz(s_sel[(w, "left", "length")].iia_informative), -cands.index(w)))
        entry = {"selected_site": str(best), "pairs_kept_selection": len(runs_sel.pairs),
                 "pairs_kept_held_out": len(runs_held.pairs),
                 "held_out": {f"{w}|{m}|{c}": r.to_dict() for (w, m, c), r in s_held.items()},
                 "selection": {f"{w}|{m}|{c}": r.to_dict() for (w, m, c), r in s_sel.items()}}
        for w in dict.fromkeys([best, "canvas"]):  # the chosen site, and the count token read (as on the AR twin)
            for m, c in COMBOS:
                iia_rows.append((f"{count_at(w, m, c).name} [{name}]", s_held[(w, m, c)]))
        for c in ("length", "list"):
            hyp = count_at(best, "left", c)
            rnd = random_site_baseline(diff, hyp, runs=runs_held, draws=draws, seed=ctx.seed, batch_size=32)
            entry[f"random_sites_left_{c}"] = rnd.to_dict()
            iia_rows.append((f"random sites [left]/{c} [{name}]", rnd))
        if name == iia_settings[0]:
            runs_ar = PairRuns(ar, held, seed=ctx.seed, do_sample=False)
            entry["ar_twin"] = {"pairs_kept": len(runs_ar.pairs)}
            if runs_ar.pairs:
                ar_wheres = list(range(n_layers)) + ["canvas"]  # selfcond has no AR analogue
                s_ar = _score_sites(runs_ar, ar_wheres)
                entry["ar_twin"]["held_out"] = {f"{w}|{m}|{c}": r.to_dict() for (w, m, c), r in s_ar.items()}
                ar_best = best if isinstance(best, int) else n_layers - 1
                for w in dict.fromkeys([ar_best, "canvas"]):
                    for m, c in COMBOS:
                        iia_rows.append((f"{count_at(w, m, c).name} AR twin", s_ar[(w, m, c)]))
                for w in dict.fromkeys([ar_best, "canvas"]):
                    rnd = random_site_baseline(ar, count_at(w, "left", "length"), runs=runs_ar, draws=draws,
                                               seed=ctx.seed, batch_size=32)
                    entry["ar_twin"][f"random_sites_{w}_left_length"] = rnd.to_dict()
                    iia_rows.append((f"random sites like n@{w if w == 'canvas' else f'L{w}'}[left]/length AR twin", rnd))
        numbers["iia"][name] = entry
    numbers["iia_rows"] = [(label, r.to_dict()) for label, r in iia_rows]
    if iia_rows:
        figures["iia"] = iia_figure(iia_rows, "count decides where the list lands: IIA (95% Wilson CI)")
    md = _markdown(numbers, iia_rows, wheres, settings, slow, figures)
    return Report("Case study: smearing — does the count place the list?", md, figures, numbers)


def _pheno_rows(numbers) -> list[str]:
    out = ["| setting | model | accuracy | mean steps | off-centre token mass (mean over steps) | peak (step, d) | "
           "off-centre token mass, step 0 | fraction of steps sequence-smeared | rows with a smeared step | peak off-centre P(EOS) | "
           "drafted count = drafted list length |", "|" + "---|" * 10]
    for name, ph in numbers["phenomena"].items():
        ts, ss, es, ct = ph["token_smearing"], ph["sequence_smearing"], ph["eos_smearing"], ph["count_trace"]
        kind = "AR twin" if name.startswith("AR") else "diffusion"
        step0 = ts["neighbour_mass_by_step"][0] if ts["neighbour_mass_by_step"] else float("nan")
        rb = ph["token_smearing_robust"]
        out.append(f"| {name} | {kind} | {ph['accuracy']:.3f} | {ph['commit']['mean_steps']:.1f} | {f3(rb['mean'])} | "
                   f"{f3(rb['peak'])} ({rb['peak_step']}, {rb['peak_offset']:+d}) | {f3(step0)} | "
                   f"{f3(ss['fraction_steps_smeared'])} | {ss['rows_with_smearing']}/{ss['rows']} | "
                   f"{f3(es['peak_off_centre'])} | {f3(ct['fraction_steps_count_matches_drafted_list'])} "
                   f"({ct['steps_with_count_and_list']} steps) |")
    return out


def _site_table(numbers, wheres) -> list[str]:
    out = []
    blocks = [(name, e) for name, e in numbers["iia"].items()]
    blocks += [("AR twin (greedy)", e["ar_twin"]) for _, e in blocks if "held_out" in e.get("ar_twin", {})]
    for name, e in blocks:
        if "held_out" not in e:
            continue
        if not out:
            out = ["| setting | model / compared on | " + " | ".join(f"L{w}" if isinstance(w, int) else w
                                                                     for w in wheres) + " |",
                   "|---|---|" + "---|" * len(wheres)]
        for m, c in COMBOS:
            cells = [f3(e["held_out"].get(f"{w}|{m}|{c}", {}).get("iia_informative")) for w in wheres]
            out.append(f"| {name} | {m} / {c} | " + " | ".join(cells) + " |")
    return out


def _verdict(numbers, settings, slow) -> list[str]:
    """Plain statements, each with its numbers, of whether smearing and count-placement appear."""
    ph = numbers["phenomena"]
    lines = []
    for name in (list(settings)[0], slow):
        p = ph[name]
        rb, ss, es = p["token_smearing_robust"], p["sequence_smearing"], p["eos_smearing"]
        smear = rb["peak"] >= 0.05 or ss["fraction_steps_smeared"] >= 0.05
        lines.append(f"- **{name}** ({p['commit']['mean_steps']:.1f} steps on average, accuracy {p['accuracy']:.3f}): "
                     + ("smearing **appears**" if smear else "smearing is **absent**")
                     + f" (off-centre token mass {f3(rb['mean'])} on average, peak {f3(rb['peak'])} at step "
                     f"{rb['peak_step']}, offset {rb['peak_offset']:+d}; {f3(ss['fraction_steps_smeared'])} of row-steps best aligned at a "
                     f"shift, in {ss['rows_with_smearing']}/{ss['rows']} rows; peak off-centre EOS mass "
                     f"{f3(es['peak_off_centre'])}). Threshold for 'appears': peak off-centre mass ≥ 0.05 (steps with "
                     "≥ 25% of rows active) or ≥ 5% smeared steps.")
    ar = ph["AR twin (greedy)"]
    lines.append(f"- **AR twin**: accuracy {ar['accuracy']:.3f}; sequence-smeared steps "
                 f"{f3(ar['sequence_smearing']['fraction_steps_smeared'])} (AR writes each token once, in place).")
    for name, e in numbers["iia"].items():
        if "held_out" not in e:
            continue
        w = e["selected_site"]
        g = (lambda m, c: e["held_out"][f"{w}|{m}|{c}"])
        lines.append(f"- **IIA [{name}]**, site {'L' + w if w.isdigit() else w} (chosen on the selection half): the emitted count follows "
                     f"{f3(g('independent', 'count')['iia_informative'])}; EOS follows the patched count "
                     f"(length) {f3(g('left', 'length')['iia_informative'])} "
                     f"(CI {f3(g('left', 'length')['ci95_informative'][0])}–{f3(g('left', 'length')['ci95_informative'][1])}, "
                     f"n={g('left', 'length')['n_informative']}); list laid out as the left-anchored model "
                     f"{f3(g('left', 'list')['iia_informative'])}, right-anchored "
                     f"{f3(g('right', 'list')['iia_informative'])}, independent (only the count changes) "
                     f"{f3(g('independent', 'answer')['iia_informative'])}; random sites (length) "
                     f"{f3(e['random_sites_left_length']['mean_iia_informative'])}.")
    return lines


def _markdown(numbers, iia_rows, wheres, settings, slow, figures) -> str:
    lines = [
        "Models: the zoo's `count-diffusion` (DiffusionGemma, canvas 11) and its AR twin `count-ar`, on the count "
        f"task ({numbers['n_phenomena_prompts']} prompts from the task distribution for the phenomena, "
        f"{numbers['n_pairs']} (base, source) pairs with different counts for IIA, half to choose the site, half "
        "to score it). Definitions: docs/case_studies.md; the hypotheses: case_studies/smearing/hypothesis.py.",
        "",
        "## Findings",
        "",
        *_verdict(numbers, settings, slow),
        "",
        "## Phenomena by sampler setting",
        "",
        *_pheno_rows(numbers),
        "",
        "Token-smear mass at (step k, offset d): mean probability of the final token of position p at p + d "
        "(where another token ends up). P(EOS) off centre: mass of EOS one or two positions away from where the "
        "list finally ends. Last column: fraction of (row, step) argmax canvases with a digit count and an EOS "
        "whose written count equals the drafted list's length (1.0 = every intermediate canvas is a consistent "
        "answer).",
        "",
        *[f"![{k}]({k}.png)" for k in figures if k.startswith(("token_smearing", "eos_smearing", "sequence"))],
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
        *_site_table(numbers, wheres),
        "",
        "![iia](iia.png)" if "iia" in figures else "",
    ]
    return "\n".join(lines)

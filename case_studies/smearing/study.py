"""`compute(ctx)` and `run(ctx)`: the smearing case study (count task: do list tokens smear, and does the count place them?).

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
Every number in the report is computed here (`compute`); nothing is hard-coded. The text is
`report.render(numbers)`, so a wording change re-renders report.md from report.json
(`dgt_interp.studies.rerender`) without rerunning the models.
"""

from __future__ import annotations

import random

from case_studies.common_report import collect_probes, iia_figure, nz, slug
from case_studies.count_common import (
    count_trace,
    eos_smearing,
    offcentre_mass,
    run_prompts,
    sample_problem,
    sampler_settings,
)
from dgt_interp.causal import PairRuns, expected_answers, random_site_baseline
from dgt_interp.phenomena import token_smearing
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID
from dgt_interp.viz import canvas_figure

from .hypothesis import count_at, smearing_pairs
from .report import COMBOS, TITLE, render


def _phenomena(model, problems, seed, ar: bool, **gen) -> tuple:
    traj, _, det = run_prompts(model, problems, seed, **gen)
    src = "argmax" if ar else "probs"  # AR logits exist only where a token was written
    res = {"accuracy": det["accuracy"], "commit": det["commit_argmax"],
           "token_smearing": token_smearing(traj, eos_id=EOS_ID, source="argmax") if ar else det["token_smearing"],
           "sequence_smearing": det["sequence_smearing"],
           "eos_smearing": eos_smearing(traj, source=src),
           "count_trace": count_trace(traj, problems)}
    return traj, res, det


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


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
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
    for name in ctx.progress(list(settings), desc="phenomena: sampler settings"):
        trajs[name], results[name], det = _phenomena(diff, problems, ctx.seed, False, **settings[name])
        numbers["phenomena"][name] = _numbers(results[name])
        collect_probes(numbers, name, det)
    traj_ar, res_ar, det_ar = _phenomena(ar, problems, ctx.seed, True, do_sample=False)
    numbers["phenomena"]["AR twin (greedy)"] = _numbers(res_ar)
    collect_probes(numbers, "AR twin (greedy)", det_ar)
    for name in (list(settings)[0], slow):
        r = results[name]
        figures[f"token_smearing_{slug(name)}"] = r["token_smearing"].figure(f"token smearing, {name}")
        figures[f"eos_smearing_{slug(name)}"] = r["eos_smearing"].figure(f"where the list ends (P(EOS)), {name}")
    figures["sequence_smearing_slow"] = results[slow]["sequence_smearing"].figure(f"sequence smearing, {slow}")
    figures["token_smearing_ar"] = res_ar["token_smearing"].figure("token smearing, AR twin (argmax)")
    st = trajs[slow]
    longest = int(st.records["active"].sum(0).argmax())  # the row that took the most steps
    figures["canvas_example"] = canvas_figure(st, batch=longest)

    # 2. IIA of "the count decides where the list lands", per sampler setting
    pairs = smearing_pairs(n_pairs, seed=ctx.seed)
    half = len(pairs) // 2
    sel, held = pairs[:half], pairs[half:]
    iia_rows = []
    iia_settings = [list(settings)[0]] + ([] if quick else [slow])
    for name in ctx.progress(iia_settings, desc="IIA: sampler settings"):
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
        best = max(cands, key=lambda w: (nz(s_sel[(w, "independent", "count")].iia_informative),
                                         nz(s_sel[(w, "left", "length")].iia_informative), -cands.index(w)))
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
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)

"""`compute(ctx)` and `run(ctx)`: the sort case study (which algorithm sorts, where it lives, in what order digits commit).

1. Phenomena per sampler setting: the zoo default, the "gentle" preset of `dgt_interp.bottleneck`, a
   tight entropy bound (1e-4) with the default stopping rule, the same with early stopping switched
   off (confidence threshold 1e-9: the sampler fills the canvas a few positions per step over ~40
   steps) and a hot temperature (1.6 -> 1.2: one position held per step until the step limit). Per
   setting: accuracy, steps, the four record detectors of `dgt_interp.phenomena`, and step-0
   entropy by kind of answer position (what the entropy-bound sampler orders by); AR twin alongside.
2. Causal effect of canvas positions on each other and of kept drafts (`canvas_flips`, `draft_effects`).
3. IIA of the rank model (o_i at canvas position i: a layer's residual, the self-conditioning channel
   or the canvas token; all / first / later steps), alignment chosen on half the pairs and scored on
   the other half, next to random sites and the AR twin; and the previous-token test that separates
   the rank model from the successor model, on both models.
Every number in the report is computed here (`compute`); nothing is hard-coded. The text is
`report.render(numbers)`, so a wording change re-renders report.md from report.json
(`dgt_interp.studies.rerender`) without rerunning the models.
"""

from __future__ import annotations

import random

import torch
from matplotlib.figure import Figure

from case_studies.common_report import collect_probes, nz, slug
from case_studies.samplers import sampler_grid
from dgt_interp.causal import BaselineResult, PairRuns, expected_answers, random_sites
from dgt_interp.evaluate import prompt_batch
from dgt_interp.models import is_diffusion
from dgt_interp.patching import Site
from dgt_interp.phenomena import (
    canvas_flips,
    detect_phenomena,
    draft_effects,
    find_drafts,
)
from dgt_interp.stats import wilson_interval
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID, VOCAB
from dgt_interp.trajectory import answer_mask
from dgt_interp.viz import commit_heatmap

from .hypothesis import (
    RANK_MODEL,
    SUCCESSOR_MODEL,
    order_pairs,
    order_stat_at,
    previous_token_at,
    previous_token_pairs,
    sample_problem,
)
from .report import DEFAULT, GENTLE, HOT, MANY, POSITION_KINDS, RANK_CLASSES, TIGHT, TITLE, render


def sampler_settings(quick: bool) -> dict[str, dict]:
    """name -> generate kwargs (`case_studies.samplers`). The first is the zoo default; `MANY` resolves the
    canvas over many steps (capped at 6 steps in the quick setting)."""
    labels = {"eb=0.1 (default)": DEFAULT, "eb=1e-4": TIGHT, "eb=1e-4, no early stop": MANY,
              "eb=1e-4, T=1.2-1.6": HOT, "gentle": GENTLE}
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4, no early stop"], labels=labels,
                            overrides={"eb=1e-4, no early stop": dict(max_denoising_steps=6)})
    return sampler_grid(["eb=0.1 (default)", "gentle", "eb=1e-4", "eb=1e-4, no early stop", "eb=1e-4, T=1.2-1.6"],
                        labels=labels)


# hook names every alignment (and its random twin) patches: stashed in one clean run per PairRuns
SITE_NAMES = {"diffusion": ("blocks.*.hook_resid_post", "self_cond.hook_logits_in", "hook_embed"),
              "ar": ("blocks.*.hook_resid_post", "hook_embed")}
WHERE_STEPS = [(w, s) for w in (0, 1, 2, 3) for s in ("all", "first", "later")] + [("selfcond", "all"),
                                                                                    ("canvas", "all")]


# ---------------------------------------------------------------------------------------------
# 1. phenomena
# ---------------------------------------------------------------------------------------------


def position_kinds(final: torch.Tensor) -> torch.Tensor:
    """`[B, L]` kind of each emitted position: 0 = a digit that occurs once in the answer, 1 = a digit
    of a run (occurs more than once), 2 = the EOS, -1 = after the EOS."""
    mask = answer_mask(final, EOS_ID)
    kinds = torch.full(final.shape, -1)
    for b in range(final.shape[0]):
        for p in torch.nonzero(mask[b]).flatten().tolist():
            tok = int(final[b, p])
            kinds[b, p] = 2 if tok == EOS_ID else int(int((final[b][mask[b]] == tok).sum()) > 1)
    return kinds


def rank_classes(final: torch.Tensor) -> torch.Tensor:
    """`[B, L]` which order statistic each answer digit is: 0 = the smallest (position 0), 2 = the
    largest (the last digit), 1 = in between, -1 = EOS and after."""
    digits = answer_mask(final, EOS_ID, include_eos=False)
    out = torch.full(final.shape, -1)
    for b in range(final.shape[0]):
        pos = torch.nonzero(digits[b]).flatten().tolist()
        for p in pos:
            out[b, p] = 0 if p == pos[0] else 2 if p == pos[-1] else 1
    return out


def confidence_structure(traj, commit=None) -> dict:
    """Step-0 entropy (what the entropy-bound sampler sorts by) per kind of answer position (unique /
    repeated digit / EOS; smallest / interior / largest digit) and per position, and the mean sampler
    commit step per kind (`commit`: a sampler `CommitOrder`)."""
    final = traj.final_tokens()
    ent = traj.records["entropy"][0].float()  # [B, L] at the canvas's first step
    out: dict = {}
    for key, classes, names in (("kind", position_kinds(final), POSITION_KINDS),
                                ("rank", rank_classes(final), RANK_CLASSES)):
        out[f"step0_entropy_by_{key}"], out[f"commit_step_by_{key}"] = {}, {}
        for k, name in enumerate(names):
            sel = classes == k
            out[f"step0_entropy_by_{key}"][name] = {
                "n": int(sel.sum()), "mean": float(ent[sel].mean()) if sel.any() else float("nan"),
                "median": float(ent[sel].median()) if sel.any() else float("nan")}
            if commit is not None:
                c = commit.commit_step[sel]
                c = c[torch.isfinite(c)]
                out[f"commit_step_by_{key}"][name] = float(c.mean()) if c.numel() else float("nan")
    digits = answer_mask(final, EOS_ID, include_eos=False)
    out["step0_entropy_by_position"] = [float(ent[digits[:, p], p].mean()) if digits[:, p].any() else float("nan")
                                        for p in range(ent.shape[1])]
    return out


def _confidence_figure(conf: dict, title: str) -> Figure:
    fig = Figure(figsize=(9.5, 2.9), layout="constrained")
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    by_pos = [max(x, 1e-12) if x == x else float("nan") for x in conf["step0_entropy_by_position"]]
    a.semilogy(range(len(by_pos)), by_pos, marker="o")
    a.set_xlabel("canvas position")
    a.set_ylabel("mean step-0 entropy, digits (nats)")
    groups = [(k, conf["step0_entropy_by_rank"][k]) for k in RANK_CLASSES] + \
        [(k, conf["step0_entropy_by_kind"][k]) for k in POSITION_KINDS]
    groups = [(k, v) for k, v in groups if v["n"]]
    b.bar(range(len(groups)), [max(v["mean"], 1e-12) for _, v in groups], log=True,
          color=["tab:green"] * sum(k in RANK_CLASSES for k, _ in groups)
          + ["tab:blue"] * sum(k not in RANK_CLASSES for k, _ in groups))
    b.set_xticks(range(len(groups)), [f"{k.replace(' ', chr(10))}\n(n={v['n']})" for k, v in groups], fontsize=7)
    b.set_xlabel("kind of answer digit (order statistic / position kind)")
    b.set_ylabel("mean step-0 entropy")
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. IIA
# ---------------------------------------------------------------------------------------------


def _score_sets(runs: PairRuns, hyp_sets: list[list], batch_size: int = 64):
    """Score several hypothesis lists sharing one site list (e.g. digit-level and answer-level)
    from one batch of patched runs: `[[IIAResult per hypothesis] per list]`."""
    sites = [h.sites(runs.ctx) for h in hyp_sets[0]]
    outs = runs.outputs(sites, batch_size=batch_size)
    return [[runs.score(h.name, s, o, expected_answers(h, runs.pairs), h) for h, s, o in zip(hyps, sites, outs)]
            for hyps in hyp_sets], outs


def _random_sets(runs: PairRuns, hyps: list, draws: int, seed: int, batch_size: int = 64):
    """Random-site baselines (same shape as `hyps[0]`'s sites) scored against every hypothesis in `hyps`."""
    rng = random.Random(f"random-sites:{seed}")
    like = list(hyps[0].sites(runs.ctx))
    site_sets = [random_sites(runs, like, rng) for _ in range(draws)]
    outs = runs.outputs(site_sets, batch_size=batch_size)
    return [BaselineResult([runs.score(f"random #{k}", s, o, expected_answers(h, runs.pairs), h)
                            for k, (s, o) in enumerate(zip(site_sets, outs))]) for h in hyps]


def pooled(results) -> dict:
    """Pool IIAResults over digits: informative hits / pairs with a 95% Wilson interval."""
    c = sum(r.correct_informative for r in results)
    n = sum(r.n_informative for r in results)
    return {"correct": c, "n": n, "iia": c / n if n else float("nan"), "ci95": wilson_interval(c, n)}


def _alignment_label(where, steps) -> str:
    return f"{'L' + str(where) if isinstance(where, int) else where}:{steps}"


def pair_runs(model, pairs, seed: int, **gen) -> PairRuns:
    """`PairRuns` with every hook name the study patches stashed in one clean run."""
    return PairRuns(model, pairs, seed=seed, names=SITE_NAMES["diffusion" if is_diffusion(model) else "ar"], **gen)


def step_diagnostics(runs: PairRuns, i: int) -> dict:
    """What a patch of o_i at the last layer at step 0 only / at steps 1.. only (and at L2, all steps) does
    to the run: mean steps of the patched runs next to the unpatched base run, how often the step-1 input
    canvas holds the source's digit at position i after the step-0 patch (the sampler kept it), and how
    often the emitted digit i is the source's / the base's."""
    keep = torch.nonzero(runs.keep).flatten()
    src_tok = torch.tensor([VOCAB.index(s.answer[i]) for _, s in runs.pairs])
    base_tok = torch.tensor([VOCAB.index(b.answer[i]) for b, _ in runs.pairs])

    def steps_of(traj):
        return float(traj.records["active"].sum(0).float()[keep].mean())

    out = {"n": len(runs.pairs), "base_mean_steps": steps_of(runs.p.corrupted)}
    last = runs.ctx.n_layers - 1
    for tag, layer, step in (("first", last, 0), ("later", last, slice(1, None)), ("L2:all", last - 1, None)):
        if runs.ctx.n_steps < 2 and tag != "L2:all":
            continue
        traj = runs.p.run([Site(f"blocks.{layer}.hook_resid_post", step=step, pos=i)], record=())
        final = traj.final_tokens()[keep, i]
        out[tag] = {"mean_steps": steps_of(traj), "final_is_source": float((final == src_tok).float().mean()),
                    "final_is_base": float((final == base_tok).float().mean())}
        if tag == "first":
            out[tag]["kept_in_canvas_at_step1"] = float((traj.records["input_canvas"][1, keep, i] == src_tok)
                                                        .float().mean())
    return out


def _iia_setting(diff, ar, gen: dict, digits, n_pairs, draws, seed, with_ar: bool, tick=lambda: None) -> dict:
    entry: dict = {"digits": {}, "ar_twin": {}}
    for i in digits:
        pairs = order_pairs(i, n_pairs, seed=seed)
        half = len(pairs) // 2
        runs_sel = pair_runs(diff, pairs[:half], seed, **gen)
        runs_held = pair_runs(diff, pairs[half:], seed, **gen)
        local = [order_stat_at(i, w, s, "digit") for w, s in WHERE_STEPS]
        full = [order_stat_at(i, w, s) for w, s in WHERE_STEPS]
        succ = [order_stat_at(i, w, s, model=SUCCESSOR_MODEL) for w, s in WHERE_STEPS]
        nxt_rank = [order_stat_at(i, w, s, compare="next") for w, s in WHERE_STEPS]
        nxt_succ = [order_stat_at(i, w, s, compare="next", model=SUCCESSOR_MODEL) for w, s in WHERE_STEPS]
        (sel_local, sel_full), _ = _score_sets(runs_sel, [local, full])
        (held_local, held_full, held_succ, held_next, held_next_succ), _ = _score_sets(
            runs_held, [local, full, succ, nxt_rank, nxt_succ])
        best = max(range(len(local)), key=lambda k: (nz(sel_local[k].iia_informative), -k))
        base_local, base_full = _random_sets(runs_held, [local[best], full[best]], draws, seed)
        e = {"selected": _alignment_label(*WHERE_STEPS[best]),
             "alignments": [_alignment_label(w, s) for w, s in WHERE_STEPS],
             "selection_digit": sel_local, "selection_answer": sel_full,
             "held_out_digit": held_local, "held_out_answer": held_full, "held_out_answer_successor": held_succ,
             "held_out_next_rank": held_next, "held_out_next_successor": held_next_succ,
             "random_sites_digit": base_local, "random_sites_answer": base_full,
             "step_diagnostics": step_diagnostics(runs_held, i),
             "n_pairs_dropped": runs_sel.dropped + runs_held.dropped}
        entry["digits"][i] = e
        if with_ar:
            runs_ar = pair_runs(ar, pairs[half:], seed, do_sample=False)
            ar_local = [order_stat_at(i, layer, compare="digit") for layer in range(4)]
            ar_full = [order_stat_at(i, layer) for layer in range(4)]
            ar_succ = [order_stat_at(i, layer, model=SUCCESSOR_MODEL) for layer in range(4)]
            ar_nr = [order_stat_at(i, layer, compare="next") for layer in range(4)]
            ar_ns = [order_stat_at(i, layer, compare="next", model=SUCCESSOR_MODEL) for layer in range(4)]
            (ar_l, ar_f, ar_s, ar_nr, ar_ns), _ = _score_sets(runs_ar, [ar_local, ar_full, ar_succ, ar_nr, ar_ns])
            ar_best = max(range(4), key=lambda k: (nz(ar_l[k].iia_informative), -k))
            rl, rf = _random_sets(runs_ar, [ar_local[ar_best], ar_full[ar_best]], draws, seed)
            entry["ar_twin"][i] = {"layers": [f"L{k}" for k in range(4)], "held_out_digit": ar_l,
                                   "held_out_answer": ar_f, "held_out_answer_successor": ar_s,
                                   "held_out_next_rank": ar_nr, "held_out_next_successor": ar_ns,
                                   "best": f"L{ar_best}", "random_sites_digit": rl,
                                   "random_sites_answer": rf, "n_pairs_dropped": runs_ar.dropped}
        tick()
    return entry


def previous_token_test(model, i: int, n_pairs: int, seed: int, **gen) -> dict:
    """Patch the token read before digit i from a source: how often the output follows the successor
    model (digit i / whole answer) or the rank model (output unchanged)."""
    runs = pair_runs(model, previous_token_pairs(i, n_pairs, seed=seed), seed, **gen)
    hyps = [previous_token_at(i, compare="digit"), previous_token_at(i), previous_token_at(i, RANK_MODEL, "digit"),
            previous_token_at(i, RANK_MODEL)]
    (res,), outs = _score_sets(runs, [hyps])
    # all pairs: the rank model predicts "unchanged", so it has no informative pairs by construction
    return {"successor_digit": res[0], "successor_answer": res[1], "rank_digit": res[2], "rank_answer": res[3],
            "examples": [{"base": b.prompt, "base_answer": b.answer, "source_answer": s.answer, "patched": o}
                         for (b, s), o in list(zip(runs.pairs, outs[0]))[:8]]}


def _grid_figure(iia: dict, title: str) -> Figure:
    """Held-out IIA (digit level, pooled over digits) per alignment, one panel per setting, AR twin marked."""
    settings = list(iia)
    fig = Figure(figsize=(4.2 * len(settings), 3.4), layout="constrained")
    axes = fig.subplots(1, len(settings), squeeze=False)[0]
    for ax, name in zip(axes, settings):
        e = iia[name]
        labels = next(iter(e["digits"].values()))["alignments"]
        vals, errs = [], []
        for k in range(len(labels)):
            p = pooled([d["held_out_digit"][k] for d in e["digits"].values()])
            vals.append(0 if p["iia"] != p["iia"] else p["iia"])
            errs.append((max(vals[-1] - p["ci95"][0], 0), max(p["ci95"][1] - vals[-1], 0)))
        colors = ["tab:blue" if ":all" in lab else "tab:cyan" if ":first" in lab else "tab:purple" for lab in labels]
        ax.bar(range(len(labels)), vals, yerr=list(zip(*errs)), capsize=2, color=colors)
        if e["ar_twin"]:
            for k in range(4):
                p = pooled([d["held_out_digit"][k] for d in e["ar_twin"].values()])
                ax.plot(3 * k, p["iia"], marker="D", color="tab:orange", ls="none",
                        label="AR twin, same layer" if k == 0 else None)
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("alignment (site : steps patched)")
        ax.set_ylabel("held-out IIA, digit i (pooled)")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def _prev_figure(prev: dict) -> Figure:
    fig = Figure(figsize=(7.5, 2.9), layout="constrained")
    ax = fig.add_subplot()
    labels, succ, rank = [], [], []
    for model, per in prev.items():
        for i, r in per.items():
            labels.append(f"{model}\ndigit {i}")
            succ.append(r["successor_digit"])
            rank.append(r["rank_digit"])
    x = torch.arange(len(labels)).float()

    def err(rs):
        return [[r.iia - r.ci95[0] for r in rs], [r.ci95[1] - r.iia for r in rs]]

    ax.bar(x - 0.2, [r.iia for r in succ], 0.4, yerr=err(succ), capsize=3, color="tab:red",
           label="digit i = successor of the patched token")
    ax.bar(x + 0.2, [r.iia for r in rank], 0.4, yerr=err(rank), capsize=3, color="tab:blue",
           label="digit i unchanged (rank model)")
    ax.set_xticks(x.tolist(), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("model / setting, digit i")
    ax.set_ylabel("fraction of pairs")
    ax.legend(fontsize=7)
    ax.set_title("patch the token read before digit i (previous-token test; 95% Wilson CI)", fontsize=9)
    return fig


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_pheno = 4 if quick else 32
    n_causal = 2 if quick else 8
    n_pairs = 8 if quick else 24
    draws = 2 if quick else 4
    digits = [2] if quick else [0, 2, 4]
    prev_digits = [2] if quick else [1, 3]
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    rng = random.Random(f"sort-study:{ctx.seed}")
    prompts = [sample_problem(rng) for _ in range(n_pheno)]
    settings = sampler_settings(quick)
    numbers: dict = {"settings": list(settings), "n_phenomena_prompts": n_pheno, "n_causal_prompts": n_causal,
                     "n_pairs": n_pairs, "digits": digits, "previous_token_digits": prev_digits, "phenomena": {},
                     "confidence": {}, "causal": {}, "iia": {}, "previous_token": {},
                     "vocab_size": diff.config.get_text_config().vocab_size}
    figures: dict = {}
    steps_total = len(settings) + 1 + (1 if quick else 2) + (1 if quick else 2) * (len(digits) + len(prev_digits))
    # (phenomena per setting, AR twin, canvas patching per setting, IIA per digit and previous-token digit)
    bar = iter(ctx.progress(range(steps_total), desc="sort study: analysis stages", total=steps_total))

    def tick():
        next(bar, None)

    # 1. phenomena per sampler setting (+ the AR twin, greedy)
    trajs, results = {}, {}
    for name, gen in settings.items():
        trajs[name], results[name] = detect_phenomena(diff, prompts, seed=ctx.seed, **gen)
        numbers["phenomena"][name] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in results[name].items()}
        collect_probes(numbers, name, results[name])
        numbers["confidence"][name] = confidence_structure(trajs[name], results[name]["commit_sampler"])
        tick()
    traj_ar, res_ar = detect_phenomena(ar, prompts, seed=ctx.seed, do_sample=False)
    numbers["phenomena"]["AR twin (greedy)"] = {k: (v if isinstance(v, float) else v.to_dict())
                                                for k, v in res_ar.items()}
    collect_probes(numbers, "AR twin (greedy)", res_ar)
    tick()
    many = MANY
    hot = HOT if HOT in settings else MANY
    figures["commit_order_many"] = results[many]["commit_sampler"].figure(f"commit order, DiffusionGemma, {many}, "
                                                                         "by sampler")
    figures["commit_order_argmax_many"] = results[many]["commit_argmax"].figure(f"commit order, {many}, by argmax")
    figures["commit_order_ar"] = res_ar["commit_argmax"].figure("commit order, AR twin")
    figures["token_smearing_hot"] = results[hot]["token_smearing"].figure(f"token smearing, {hot}")
    figures["sequence_smearing_many"] = results[many]["sequence_smearing"].figure(f"sequence smearing, {many}")
    figures["confidence_default"] = _confidence_figure(numbers["confidence"][DEFAULT],
                                                       f"step-0 entropy by answer position, {DEFAULT}")
    figures["commit_heatmap_many"] = commit_heatmap(trajs[many], batch=0)

    # 2. causal: later -> earlier, drafts -> answer
    base_p = prompts[:n_causal]
    src_p = [sample_problem(rng) for _ in range(n_causal)]
    ids = prompt_batch([p.prompt for p in base_p + src_p])["input_ids"]  # one padding for both
    mask = prompt_batch([p.prompt for p in base_p + src_p])["attention_mask"]
    for name in ([many] if quick else [DEFAULT, many]):
        n_steps = 8 if name == many else None  # at most the first 8 canvas steps of the many-step run
        flips = canvas_flips(diff, ids[:n_causal], ids[n_causal:], attention_mask=mask[:n_causal],
                             source_attention_mask=mask[n_causal:], channels=("canvas",), eos_id=EOS_ID,
                             seed=ctx.seed, batch_size=64, steps=None if n_steps is None else
                             range(min(n_steps, int(trajs[name].n_steps) - 1)), **settings[name])
        eff = draft_effects(find_drafts(flips.base, eos_id=EOS_ID), flips)
        numbers["causal"][name] = {"positions": flips.later_on_earlier(), "drafts": eff.to_dict(),
                                   "drafts_in_run": find_drafts(flips.base, eos_id=EOS_ID).to_dict()}
        figures[f"canvas_flips_{slug(name)}"] = flips.figure(f"canvas patch flip rate, {name}")
        tick()

    # 3. IIA of the rank model, per IIA setting, vs random sites and the AR twin
    iia_settings = [DEFAULT] if quick else [DEFAULT, many]
    for name in iia_settings:
        numbers["iia"][name] = _iia_setting(diff, ar, settings[name], digits, n_pairs, draws, ctx.seed,
                                            with_ar=name == DEFAULT, tick=tick)
    for name in iia_settings:
        numbers["previous_token"][name] = {}
        for i in prev_digits:
            numbers["previous_token"][name][i] = previous_token_test(diff, i, n_pairs // 2, ctx.seed, **settings[name])
            tick()
    numbers["previous_token"]["AR twin"] = {i: previous_token_test(ar, i, n_pairs // 2, ctx.seed, do_sample=False)
                                            for i in prev_digits}
    figures["iia_alignments"] = _grid_figure(numbers["iia"], "o_i aligned to canvas position i: where it lives")
    figures["previous_token"] = _prev_figure({"diffusion" if k != "AR twin" else k: v
                                              for k, v in numbers["previous_token"].items()
                                              if k in (DEFAULT, "AR twin")})
    for _ in bar:
        pass
    numbers["summary"] = _summary(numbers)
    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)


# ---------------------------------------------------------------------------------------------
# summary numbers (the text: report.py)
# ---------------------------------------------------------------------------------------------


def _summary(numbers: dict) -> dict:
    """Pooled held-out IIA per alignment and setting, the best alignment, baselines, AR, previous token."""
    out: dict = {"iia": {}, "previous_token": {}}
    for name, e in numbers["iia"].items():
        ds = list(e["digits"].values())
        labels = ds[0]["alignments"]
        per = {lab: {"digit": pooled([d["held_out_digit"][k] for d in ds]),
                     "answer": pooled([d["held_out_answer"][k] for d in ds]),
                     "answer_successor": pooled([d["held_out_answer_successor"][k] for d in ds]),
                     "next_rank": pooled([d["held_out_next_rank"][k] for d in ds]),
                     "next_successor": pooled([d["held_out_next_successor"][k] for d in ds])}
               for k, lab in enumerate(labels)}
        rnd = {"digit": _pool_baseline([d["random_sites_digit"] for d in ds]),
               "answer": _pool_baseline([d["random_sites_answer"] for d in ds])}
        best = max(labels, key=lambda lab: (nz(per[lab]["digit"]["iia"]), -labels.index(lab)))
        earliest = next((lab for lab in labels if lab.endswith(":all") and per[lab]["digit"]["ci95"][0] >= 0.5), None)
        diag = [d["step_diagnostics"] for d in ds]
        s = {"alignments": per, "selected_per_digit": {i: d["selected"] for i, d in e["digits"].items()},
             "step_diagnostics": _pool_diagnostics(diag),
             "best_held_out": best, "earliest_layer_with_ci_above_half": earliest, "random_sites": rnd}
        if e["ar_twin"]:
            ars = list(e["ar_twin"].values())
            s["ar_twin"] = {f"L{k}": {"digit": pooled([a["held_out_digit"][k] for a in ars]),
                                      "answer": pooled([a["held_out_answer"][k] for a in ars]),
                                      "answer_successor": pooled([a["held_out_answer_successor"][k] for a in ars]),
                                      "next_rank": pooled([a["held_out_next_rank"][k] for a in ars]),
                                      "next_successor": pooled([a["held_out_next_successor"][k] for a in ars])}
                            for k in range(4)}
            s["ar_random_sites"] = {"digit": _pool_baseline([a["random_sites_digit"] for a in ars]),
                                    "answer": _pool_baseline([a["random_sites_answer"] for a in ars])}
        out["iia"][name] = s
    for name, per in numbers["previous_token"].items():
        rs = list(per.values())
        out["previous_token"][name] = {k: _pool_all([r[k] for r in rs]) for k in
                                       ("successor_digit", "successor_answer", "rank_digit", "rank_answer")}
    return out


def _pool_diagnostics(diags: list[dict]) -> dict:
    """Pair-weighted means of `step_diagnostics` over digits."""
    n = sum(d["n"] for d in diags)

    def mean(get):
        vals = [(get(d), d["n"]) for d in diags if get(d) is not None]
        return sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else float("nan")

    out = {"n": n, "base_mean_steps": mean(lambda d: d["base_mean_steps"])}
    for tag in ("first", "later", "L2:all"):
        keys = {k for d in diags for k in d.get(tag, {})}
        if keys:
            out[tag] = {k: mean(lambda d, k=k, tag=tag: d.get(tag, {}).get(k)) for k in sorted(keys)}
    return out


def _pool_baseline(baselines) -> dict:
    """Mean over draws of the pooled (over digits) informative IIA of random sites, with min/max draw."""
    n_draws = min(len(b.draws) for b in baselines)
    per_draw = [pooled([b.draws[k] for b in baselines])["iia"] for k in range(n_draws)]
    per_draw = [v for v in per_draw if v == v]
    return {"mean": sum(per_draw) / len(per_draw) if per_draw else float("nan"),
            "min": min(per_draw, default=float("nan")), "max": max(per_draw, default=float("nan")),
            "draws": n_draws}


def _pool_all(results) -> dict:
    """Pool over digits on all pairs (the rank model's prediction is the base answer: no informative pairs)."""
    c, n = sum(r.correct for r in results), sum(r.n for r in results)
    return {"correct": c, "n": n, "iia": c / n if n else float("nan"), "ci95": wilson_interval(c, n)}

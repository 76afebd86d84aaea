"""`run(ctx)`: the sort case study (which algorithm sorts, where it lives, in what order digits commit).

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
Every number in the report is computed here; nothing is hard-coded.
"""

from __future__ import annotations

import math
import random

import torch
from matplotlib.figure import Figure

from dgt_interp.causal import PairRuns, random_sites

from dgt_interp.studies import Report, StudyContext, iia_table
from dgt_interp.stats import wilson_interval
from dgt_interp.trajectory import answer_mask
from dgt_interp.phenomena import (
    canvas_flips,
    detect_phenomena,
    draft_effects,
    find_drafts,
    sequence_smearing,
    token_smearing,
)
from dgt_interp.tasks import EOS_ID

from .hypothesis import (
    RANK_MODEL,
    SUCCESSOR_MODEL,
    order_pairs,
    order_stat_at,
    previous_token_at,
    previous_token_pairs,
    sample_problem,
)

DEFAULT, TIGHT, MANY, HOT, GENTLE = ("default (eb=0.1)", "eb=1e-4", "eb=1e-4, no early stop",
                                     "eb=1e-4, T=1.6->1.2", "gentle (eb=0.02, T=1.0->0.5)")


def sampler_settings(quick: bool) -> dict[str, dict]:
    """name -> generate kwargs. The first is the zoo default; `MANY` resolves the canvas over many steps."""
    from dgt_interp.sampling import entropy_bound_kwargs
    from dgt_interp.sampling import sampler_settings as preset

    def eb(bound, base="default", **kw):
        return {**preset(base), **entropy_bound_kwargs(bound, **kw)}

    if quick:  # the many-step setting capped at 6 steps
        return {DEFAULT: preset("default"), MANY: eb(1e-4, confidence_threshold=1e-9, max_denoising_steps=6)}
    return {DEFAULT: preset("default"), GENTLE: preset("gentle"), TIGHT: eb(1e-4),
            MANY: eb(1e-4, confidence_threshold=1e-9), HOT: eb(1e-4, t_max=1.6, t_min=1.2)}


# hook names every alignment (and its random twin) patches: stashed in one clean run per PairRuns
SITE_NAMES = {"diffusion": ("blocks.*.hook_resid_post", "self_cond.hook_logits_in", "hook_embed"),
              "ar": ("blocks.*.hook_resid_post", "hook_embed")}
WHERE_STEPS = [(w, s) for w in (0, 1, 2, 3) for s in ("all", "first", "later")] + [("selfcond", "all"),
                                                                                    ("canvas", "all")]


# ---------------------------------------------------------------------------------------------
# 1. phenomena
# ---------------------------------------------------------------------------------------------


POSITION_KINDS = ("unique digit", "repeated digit", "EOS")
RANK_CLASSES = ("smallest digit", "interior digit", "largest digit")


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
    b.set_ylabel("mean step-0 entropy")
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# 3. IIA
# ---------------------------------------------------------------------------------------------


def _score_sets(runs: PairRuns, hyp_sets: list[list], batch_size: int = 64):
    """Score several hypothesis lists sharing one site list (e.g. digit-level and answer-level)
    from one batch of patched runs: `[[IIAResult per hypothesis] per list]`."""
    from dgt_interp.causal import expected_answers

    sites = [h.sites(runs.ctx) for h in hyp_sets[0]]
    outs = runs.outputs(sites, batch_size=batch_size)
    return [[runs.score(h.name, s, o, expected_answers(h, runs.pairs), h) for h, s, o in zip(hyps, sites, outs)]
            for hyps in hyp_sets], outs


def _random_sets(runs: PairRuns, hyps: list, draws: int, seed: int, batch_size: int = 64):
    """Random-site baselines (same shape as `hyps[0]`'s sites) scored against every hypothesis in `hyps`."""
    from dgt_interp.causal import BaselineResult, expected_answers

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
    from dgt_interp.models import is_diffusion

    return PairRuns(model, pairs, seed=seed, names=SITE_NAMES["diffusion" if is_diffusion(model) else "ar"], **gen)


def step_diagnostics(runs: PairRuns, i: int) -> dict:
    """What a patch of o_i at the last layer at step 0 only / at steps 1.. only (and at L2, all steps) does
    to the run: mean steps of the patched runs next to the unpatched base run, how often the step-1 input
    canvas holds the source's digit at position i after the step-0 patch (the sampler kept it), and how
    often the emitted digit i is the source's / the base's."""
    from dgt_interp.patching import Site
    from dgt_interp.tasks import VOCAB

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
        best = max(range(len(local)), key=lambda k: (_nz(sel_local[k].iia_informative), -k))
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
            ar_best = max(range(4), key=lambda k: (_nz(ar_l[k].iia_informative), -k))
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


def _nz(x: float) -> float:
    return -1.0 if x != x else x


def _f(x, nd=3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{nd}f}"


def _ci(r: dict) -> str:
    return f"{_f(r['iia'])} [{_f(r['ci95'][0])}, {_f(r['ci95'][1])}] ({r['correct']}/{r['n']})"


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
    ax.set_ylabel("fraction of pairs")
    ax.legend(fontsize=7)
    ax.set_title("patch the token read before digit i (previous-token test; 95% Wilson CI)", fontsize=9)
    return fig


def run(ctx: StudyContext) -> Report:
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
    bar = iter(ctx.progress(range(steps_total), desc="sort study", total=steps_total))

    def tick():
        next(bar, None)

    # 1. phenomena per sampler setting (+ the AR twin, greedy)
    trajs, results = {}, {}
    for name, gen in settings.items():
        trajs[name], results[name] = detect_phenomena(diff, prompts, seed=ctx.seed, **gen)
        numbers["phenomena"][name] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in results[name].items()}
        numbers["confidence"][name] = confidence_structure(trajs[name], results[name]["commit_sampler"])
        tick()
    traj_ar, res_ar = detect_phenomena(ar, prompts, seed=ctx.seed, do_sample=False)
    numbers["phenomena"]["AR twin (greedy)"] = {k: (v if isinstance(v, float) else v.to_dict())
                                                for k, v in res_ar.items()}
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
    from dgt_interp.viz import commit_heatmap

    figures["commit_heatmap_many"] = commit_heatmap(trajs[many], batch=0)

    # 2. causal: later -> earlier, drafts -> answer
    from dgt_interp.evaluate import prompt_batch

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
        figures[f"canvas_flips_{_slug(name)}"] = flips.figure(f"canvas patch flip rate, {name}")
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
    md = _markdown(numbers, figures)
    return Report("Case study: sort — rank or successor, where, and in what order", md, figures, numbers)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# ---------------------------------------------------------------------------------------------
# summary numbers and the report text
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
        best = max(labels, key=lambda lab: (_nz(per[lab]["digit"]["iia"]), -labels.index(lab)))
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


def _pheno_row(name, kind, r, conf) -> str:
    ca, cs, ts, ss, dr = (r[k] for k in ("commit_argmax", "commit_sampler", "token_smearing", "sequence_smearing",
                                         "drafts"))
    fmt = (lambda x: "n/a" if x is None or x != x else f"{x:+.2f}")
    pk = ts["peak"]
    ent = (" / ".join(_sci(conf["step0_entropy_by_rank"][k]["mean"]) for k in RANK_CLASSES) + " / "
           + _sci(conf["step0_entropy_by_kind"]["EOS"]["mean"]) if conf else "–")
    return (f"| {name} | {kind} | {r['accuracy']:.2f} | {ca['mean_steps']:.1f} | "
            f"{_f(ca['fraction_committed_at_step0'], 2)} | {ca['rows_with_order']}/{ca['rows']} | "
            f"{cs['rows_with_order']}/{cs['rows']} | {fmt(cs['mean_rho'])} | {_sci(pk['mass'])} (step {pk['step']}, "
            f"d={pk['offset']:+d}) | {_f(ss['fraction_steps_smeared'])} | {dr['n_drafts']} ({dr['n_in_canvas']} kept) "
            f"| {ent} |")


def _sci(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.1e}"


def _ar_smear_note(numbers: dict) -> str:
    """The AR twin's trajectory stores zero logits at positions not yet generated: their softmax is 1/V."""
    m = numbers["phenomena"]["AR twin (greedy)"]["token_smearing"]["peak"]["mass"]
    v = numbers.get("vocab_size")
    if v and abs(m - 1 / v) < 1e-6:
        return (f" (The AR twin's peak, {_sci(m)}, is 1/{v}: the uniform softmax of the zero logits its trajectory "
                "holds at positions not yet generated, not smearing.)")
    return f" AR twin: {_sci(m)}."


def _extremes_sentence(numbers: dict) -> str:
    """Which order statistics the many-step sampler holds first, next to their step-0 entropies."""
    conf = numbers["confidence"].get(MANY)
    if not conf:
        return ""
    c, e = conf["commit_step_by_rank"], conf["step0_entropy_by_rank"]
    ext = max(c["smallest digit"], c["largest digit"])
    if not (ext == ext and c["interior digit"] == c["interior digit"]):
        return ""
    return (f" With {MANY}, the sampler holds the smallest and the largest digit at mean step "
            f"{_f(c['smallest digit'], 2)} and {_f(c['largest digit'], 2)}, interior digits at "
            f"{_f(c['interior digit'], 2)}; their step-0 entropies are {_sci(e['smallest digit']['mean'])}, "
            f"{_sci(e['largest digit']['mean'])} and {_sci(e['interior digit']['mean'])}"
            + (": the extreme order statistics are the most certain and are held first."
               if c["interior digit"] > ext and e["interior digit"]["mean"] > max(e["smallest digit"]["mean"],
                                                                               e["largest digit"]["mean"]) else "."))


def _presence(numbers: dict) -> list[str]:
    """Plain statements: does each phenomenon appear, under which setting, with the numbers."""
    ph = {k: v for k, v in numbers["phenomena"].items() if k != "AR twin (greedy)"}
    lines = []
    argmax_rows = {k: v["commit_argmax"]["rows_with_order"] for k, v in ph.items()}
    samp = {k: (v["commit_sampler"]["rows_with_order"], v["commit_sampler"]["mean_rho"]) for k, v in ph.items()}
    rows = next(iter(ph.values()))["commit_argmax"]["rows"]
    step0 = min(v["commit_argmax"]["fraction_committed_at_step0"] for v in ph.values())
    lines.append(
        "- **Non-chronological order of commits: "
        + ("absent from the model's own proposals" if max(argmax_rows.values()) == 0 else "present in some rows")
        + f".** In every setting the argmax canvas already holds the final answer at step 0 (fraction of answer "
        f"positions final at step 0 ≥ {_f(step0, 3)}; rows with any argmax order: "
        + ", ".join(f"{k}: {v}/{rows}" for k, v in argmax_rows.items())
        + "). What the *sampler* holds does show an order where the bound is tight: "
        + ", ".join(f"{k}: {n}/{rows} rows, mean rho {_f(r, 2)}" for k, (n, r) in samp.items())
        + ". That order follows the entropy ranking at step 0, not a sequence of computations: the model's argmax "
        "never changes." + _extremes_sentence(numbers))
    causal = numbers["causal"]
    loe = [c["positions"]["later_on_earlier"] for c in causal.values()]
    lines.append(
        "- **Later positions informing earlier ones: "
        + ("absent" if all(x is None or x != x or x == 0 for x in loe) else "present")
        + ".** Resample-ablating one canvas position at one step changes another position's final token with rate "
        + ", ".join(f"{k}: later→earlier {_f(c['positions']['later_on_earlier'])}, earlier→later "
                    f"{_f(c['positions']['earlier_on_later'])}, itself {_f(c['positions']['self'])}"
                    for k, c in causal.items()) + ".")
    peaks = {k: v["token_smearing"]["peak"]["mass"] for k, v in ph.items()}
    lines.append(
        "- **Token smearing: " + ("absent" if max(peaks.values()) < 0.05 else "present") + ".** Largest mean "
        "probability of a final digit one or two positions away from where it ends up (only where the neighbour "
        "holds a different digit, i.e. at run boundaries — where a count-based sorter would be unsure): "
        + ", ".join(f"{k}: {_sci(m)}" for k, m in peaks.items()) + "."
        + _ar_smear_note(numbers))
    seq = {k: v["sequence_smearing"]["fraction_steps_smeared"] for k, v in ph.items()}
    lines.append("- **Sequence smearing: " + ("absent" if max(_nz(x) for x in seq.values()) <= 0 else "present")
                 + ".** Fraction of steps whose argmax canvas aligns best with the final one at a shift: "
                 + ", ".join(f"{k}: {_f(x)}" for k, x in seq.items()) + ".")
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
    lo, hi = x["ci95"]
    return "holds it" if lo >= 0.5 else "holds none of it" if x["iia"] == 0 else "holds little of it" if hi < 0.5 \
        else "holds part of it"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _findings(numbers: dict) -> list[str]:
    """The alignment findings in words; every claim is conditioned on the numbers it quotes."""
    s = numbers["summary"]
    out = []
    for name, e in s["iia"].items():
        a = e["alignments"]
        layers = ", ".join(f"L{k} {_ci(a[f'L{k}:all']['digit'])}" for k in range(4))
        first = e["earliest_layer_with_ci_above_half"]
        out.append(
            f"- **Where o_i lives ({name}).** Held-out IIA of o_i @ position i, all steps, digit i: {layers}; "
            f"best held-out alignment {e['best_held_out']}; random sites of the same shape "
            f"{_f(e['random_sites']['digit']['mean'])}. "
            + (f"The digit is localised at its own canvas position from {first.split(':')[0]} on (95% CI above 0.5); "
               if first else "No layer localises the digit at its position (no CI above 0.5); ")
            + f"the self-conditioning channel {_held(a['selfcond:all']['digit'])} "
            f"({_ci(a['selfcond:all']['digit'])}) and the canvas token {_held(a['canvas:all']['digit'])} "
            f"({_ci(a['canvas:all']['digit'])}).")
        d = e["step_diagnostics"]
        if "first" in d:
            f1, lt = d["first"], d.get("later", {})
            out.append(
                f"- **Which step decides ({name}).** Patching o_i at L3 at step 0 only: IIA "
                f"{_ci(a['L3:first']['digit'])}; the sampler kept the source digit in the step-1 canvas in "
                f"{_f(f1['kept_in_canvas_at_step1'], 2)} of pairs, yet the emitted digit is the base's in "
                f"{_f(f1['final_is_base'], 2)}: "
                + ("later steps recompute the digit from the prompt instead of reading the kept token or the "
                   "self-conditioning logits. " if f1["final_is_base"] >= 0.5 else "the step-0 decision persists. ")
                + f"Patching steps 1.. only: IIA {_ci(a['L3:later']['digit'])}"
                + (f"; patched runs take {_f(lt['mean_steps'], 1)} steps against {_f(d['base_mean_steps'], 1)} "
                   "unpatched" if lt else "")
                + (" — the patch makes step 1 disagree with step 0, so adaptive stopping runs extra steps that the "
                   "patch (limited to the steps the unpatched runs reached) does not reach, and they restore the "
                   "base digit." if lt and lt["mean_steps"] > d["base_mean_steps"] + 0.5 and lt["final_is_base"] >= 0.5
                   else ".")
                + (f" Patching L2 at all steps: runs take {_f(d['L2:all']['mean_steps'], 1)} steps and emit the "
                   f"source digit in {_f(d['L2:all']['final_is_source'], 2)}, the base digit in "
                   f"{_f(d['L2:all']['final_is_base'], 2)}." if "L2:all" in d else ""))
    default = s["iia"][DEFAULT]
    ar = default.get("ar_twin")
    if ar:
        out.append(
            "- **AR twin.** o_i at the position that predicts digit i: "
            + ", ".join(f"{k} {_ci(v['digit'])}" for k, v in ar.items())
            + f"; random sites {_f(default['ar_random_sites']['digit']['mean'])}. After patching o_i at L3, digit "
            f"i+1 is what the successor model predicts (the successor of the patched digit) in "
            f"{_ci(ar['L3']['next_successor'])} of pairs and the base's digit i+1 (rank model) in "
            f"{_ci(ar['L3']['next_rank'])}; whole answer: successor {_ci(ar['L3']['answer_successor'])}, rank "
            f"{_ci(ar['L3']['answer'])}. On DiffusionGemma the same comparison gives digit i+1: successor "
            f"{_ci(default['alignments']['L3:all']['next_successor'])}, rank "
            f"{_ci(default['alignments']['L3:all']['next_rank'])}; whole answer: successor "
            f"{_ci(default['alignments']['L3:all']['answer_successor'])}, rank "
            f"{_ci(default['alignments']['L3:all']['answer'])}.")
    pt = s["previous_token"]
    if "AR twin" in pt and DEFAULT in pt:
        ar_p, d_p = pt["AR twin"], pt[DEFAULT]
        verdict = []
        if d_p["rank_digit"]["ci95"][0] >= 0.5 and d_p["successor_digit"]["ci95"][1] < 0.5:
            verdict.append("DiffusionGemma behaves as the rank model: digit i ignores the token before it")
        if ar_p["successor_digit"]["ci95"][0] >= 0.5 and ar_p["rank_digit"]["ci95"][1] < 0.5:
            verdict.append("the AR twin reads the digit it just wrote and emits its successor")
        out.append(
            f"- **Rank or successor.** Patching the token read before digit i: AR twin, digit i is the successor of "
            f"the patched token in {_ci(ar_p['successor_digit'])} of pairs and unchanged in {_ci(ar_p['rank_digit'])}; "
            f"DiffusionGemma ({DEFAULT}): successor {_ci(d_p['successor_digit'])}, unchanged "
            f"{_ci(d_p['rank_digit'])}. " + (_sentence("; ".join(verdict)) if verdict else
                                              "Neither model is separated from the other at this sample size."))
    return out


def _baseline_cells(r: dict) -> str:
    cells = [f"{_f(r[k]['mean'])} ({_f(r[k]['min'])}–{_f(r[k]['max'])})" for k in ("digit", "answer")]
    return " | ".join(cells + ["–"] * 3)


def _markdown(numbers: dict, figures: dict) -> str:
    s = numbers["summary"]
    ph, conf = numbers["phenomena"], numbers["confidence"]
    table = ["| setting | model | accuracy | mean steps | answer positions final at step 0 (argmax) | rows with an "
             "argmax order | rows with a sampler order | mean rho (sampler) | peak token-smear mass | fraction of "
             "steps sequence-smeared | overwritten drafts | step-0 entropy: smallest / interior / largest digit / EOS |",
             "|" + "---|" * 12]
    for name in numbers["settings"]:
        table.append(_pheno_row(name, "diffusion", ph[name], conf[name]))
    table.append(_pheno_row("greedy", "AR twin", ph["AR twin (greedy)"], None))
    groups = (("rank", RANK_CLASSES), ("kind", POSITION_KINDS[:2]))
    commit_kind = ["| setting | " + " | ".join(k for _, ks in groups for k in ks) + " |", "|---|" + "---|" * 5]
    for name in numbers["settings"]:
        commit_kind.append(f"| {name} | " + " | ".join(_f(conf[name][f"commit_step_by_{g}"][k], 2)
                                                       for g, ks in groups for k in ks) + " |")

    iia_lines = []
    for name, e in s["iia"].items():
        labels = list(e["alignments"])
        if not iia_lines:
            iia_lines = ["| setting | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        iia_lines.append(f"| {name} (digit i) | " + " | ".join(_f(e["alignments"][lab]["digit"]["iia"], 2)
                                                            for lab in labels) + " |")
        iia_lines.append(f"| {name} (answer) | " + " | ".join(_f(e["alignments"][lab]["answer"]["iia"], 2)
                                                           for lab in labels) + " |")
    headline = ["| alignment / baseline | setting | model | held-out IIA, digit i [95% CI] (hits/pairs) | "
                "whole answer, rank model | whole answer, successor model | digit i+1, rank model | digit i+1, successor "
                "model |", "|---|---|---|---|---|---|---|---|"]
    for name, e in s["iia"].items():
        for lab in dict.fromkeys([e["best_held_out"], "L2:all", "L3:first", "L3:later", "selfcond:all", "canvas:all"]):
            a = e["alignments"][lab]
            headline.append(f"| o_i @ {lab} | {name} | diffusion | {_ci(a['digit'])} | {_ci(a['answer'])} | "
                            f"{_ci(a['answer_successor'])} | {_ci(a['next_rank'])} | {_ci(a['next_successor'])} |")
        r = e["random_sites"]
        headline.append(f"| random sites shaped like the selected alignment (mean of {r['digit']['draws']} draws, "
                        f"min–max) | {name} | diffusion | {_baseline_cells(r)} |")
        if "ar_twin" in e:
            for lab, a in e["ar_twin"].items():
                headline.append(f"| o_i @ {lab} (predicting position) | greedy | AR twin | {_ci(a['digit'])} | "
                                f"{_ci(a['answer'])} | {_ci(a['answer_successor'])} | {_ci(a['next_rank'])} | "
                                f"{_ci(a['next_successor'])} |")
            r = e["ar_random_sites"]
            headline.append(f"| random sites (AR) (mean of {r['digit']['draws']} draws, min–max) | greedy | AR twin | "
                            f"{_baseline_cells(r)} |")
    per_digit = ["| setting | digit i | selected on the selection half | " + " | ".join(
        next(iter(s["iia"].values()))["alignments"]) + " |", "|---|---|---|" + "---|" * len(WHERE_STEPS)]
    for name, e in numbers["iia"].items():
        for i, d in e["digits"].items():
            per_digit.append(f"| {name} | {i} | {d['selected']} | " + " | ".join(
                f"{_f(r.iia_informative, 2)}" for r in d["held_out_digit"]) + " |")
    prev = ["| model / setting | successor model, digit i | successor model, whole answer | rank model (unchanged), "
            "digit i | rank model (unchanged), whole answer |", "|---|---|---|---|---|"]
    for name, p in s["previous_token"].items():
        prev.append(f"| {name} | " + " | ".join(_ci(p[k]) for k in ("successor_digit", "successor_answer", "rank_digit",
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
        "## Findings",
        "",
        *_findings(numbers),
        "",
        *_presence(numbers),
        "",
        "## Phenomena by sampler setting",
        "",
        *table,
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
        *[f"| {k} | {len(c['positions']['steps'])} | {_f(c['positions']['later_on_earlier'])} | "
          f"{_f(c['positions']['earlier_on_later'])} | {_f(c['positions']['self'])} | {c['drafts']['n_drafts_tested']} | "
          f"{_f(c['drafts']['fraction_answer_changed'])} |" for k, c in numbers["causal"].items()],
        "",
        *[f"![{k}]({k}.png)" for k in figures if k.startswith("canvas_flips")],
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

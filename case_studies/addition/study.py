"""`compute(ctx)` and `run(ctx)`: the addition case study (carry computation and the order in which digits commit).

1. Phenomena under several sampler settings (entropy bound 0.1 = the zoo default, down to 1e-4,
   plus a hotter temperature): per setting, accuracy, mean steps and the four record detectors on
   DiffusionGemma (`dgt_interp.phenomena`), and the same detectors on the AR twin.
2. Causal effect of later positions on earlier ones and of kept drafts on the answer
   (`canvas_flips`: resample-ablate each canvas position at each step from another problem's run).
3. IIA of the carry hypotheses (`hypothesis.carry_at`), layer chosen on a selection half of the
   pairs and scored on the other half, next to random sites and the AR twin, per sampler setting.
4. Where the answer digits read the prompt: the attention of answer digit j's canvas position to its
   own column's digits and to the column below (where its carry comes from), per layer and head.
Every number in the report is computed here (`compute`); nothing is hard-coded. The text is
`report.render(numbers)`, so a wording change re-renders report.md from report.json
(`dgt_interp.studies.rerender`) without rerunning the models.
"""

from __future__ import annotations

import random

import torch
from matplotlib.figure import Figure

from case_studies.common_report import collect_probes, iia_figure, nz, slug
from case_studies.samplers import sampler_grid
from dgt_interp import capture
from dgt_interp.causal import PairRuns, expected_answers, interchange_accuracy, random_site_baseline
from dgt_interp.evaluate import prompt_batch
from dgt_interp.phenomena import (
    canvas_flips,
    detect_phenomena,
    draft_effects,
    find_drafts,
)
from dgt_interp.studies import Report, StudyContext
from dgt_interp.tasks import EOS_ID
from dgt_interp.viz import commit_heatmap

from .hypothesis import N_DIGITS, answer_position, carry_at, carry_pairs, column_positions, sample_problem
from .report import TIGHT, TITLE, iia_rows, render


def sampler_settings(quick: bool) -> dict[str, dict]:
    """name -> generate kwargs (`case_studies.samplers`): from the default to ever more denoising steps."""
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4"])
    return sampler_grid(["eb=0.1 (default)", "eb=0.01", "eb=1e-3", "eb=1e-4", "eb=1e-4, T=1.2-1.6"])


def compute(ctx: StudyContext) -> tuple[dict, dict]:
    """The study's numbers (everything `report.render` needs) and figures."""
    quick = ctx.quick
    n_pheno = 6 if quick else 32
    n_causal = 3 if quick else 8
    n_pairs = 8 if quick else 24
    carries = [2] if quick else [1, 2, 3]
    diff, ar = ctx.load("diffusion"), ctx.load("ar")
    n_layers = diff.config.get_text_config().num_hidden_layers
    layers = [n_layers // 2] if quick else list(range(n_layers))
    rng = random.Random(f"addition-study:{ctx.seed}")
    prompts = [sample_problem(rng) for _ in range(n_pheno)]
    settings = sampler_settings(quick)
    numbers: dict = {"settings": list(settings), "n_phenomena_prompts": n_pheno, "n_causal_prompts": n_causal,
                     "n_pairs": n_pairs, "phenomena": {}, "causal": {}, "iia": {}}
    figures: dict = {}

    # 1. phenomena per sampler setting (+ the AR twin, greedy)
    trajs, results = {}, {}
    for name in ctx.progress(settings, desc="phenomena: sampler settings"):
        traj, res = detect_phenomena(diff, prompts, seed=ctx.seed, **settings[name])
        trajs[name], results[name] = traj, res
        numbers["phenomena"][name] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in res.items()}
        collect_probes(numbers, name, res)
    traj_ar, res_ar = detect_phenomena(ar, prompts, seed=ctx.seed, do_sample=False)
    numbers["phenomena"]["AR twin (greedy)"] = {k: (v if isinstance(v, float) else v.to_dict()) for k, v in res_ar.items()}
    collect_probes(numbers, "AR twin (greedy)", res_ar)
    tight = TIGHT
    res_t = results[tight]
    figures["commit_order_tight"] = res_t["commit_sampler"].figure(f"commit order, DiffusionGemma, {tight}, by sampler")
    figures["commit_order_ar"] = res_ar["commit_argmax"].figure("commit order, AR twin")
    figures["token_smearing_tight"] = res_t["token_smearing"].figure(f"token smearing, {tight}")
    figures["sequence_smearing_tight"] = res_t["sequence_smearing"].figure(f"sequence smearing, {tight}")
    figures["drafts_tight"] = res_t["drafts"].figure()
    figures["commit_heatmap_example"] = commit_heatmap(trajs[tight], batch=0)

    # 2. causal: later -> earlier, drafts -> answer (tightest setting, where steps are many)
    base_p = prompts[:n_causal]
    src_p = [sample_problem(rng) for _ in range(n_causal)]
    base_ids = prompt_batch([p.prompt for p in base_p])["input_ids"]
    src_ids = prompt_batch([p.prompt for p in src_p])["input_ids"]
    for name in ctx.progress([tight] if quick else ["eb=0.1 (default)", tight], desc="canvas flips: sampler settings"):
        flips = canvas_flips(diff, base_ids, src_ids, channels=("canvas",), eos_id=EOS_ID, seed=ctx.seed,
                             batch_size=16, **settings[name])
        eff = draft_effects(find_drafts(flips.base, eos_id=EOS_ID), flips)
        loe = flips.later_on_earlier()
        numbers["causal"][name] = {"positions": loe, "drafts": eff.to_dict()}
        figures[f"canvas_flips_{slug(name)}"] = flips.figure(f"canvas patch flip rate, {name}")

    # 3. IIA of the carry hypotheses, per sampler setting, vs random sites and the AR twin
    iia_settings = [list(settings)[0]] + ([] if quick else [tight])
    for name in ctx.progress(iia_settings, desc="IIA: sampler settings"):
        numbers["iia"][name] = {}
        for j in ctx.progress(carries, desc=f"IIA {name}: carry digits"):
            pairs = carry_pairs(j, n_pairs, seed=ctx.seed)
            half = len(pairs) // 2
            sel, held = pairs[:half], pairs[half:]
            runs_sel = PairRuns(diff, sel, seed=ctx.seed, **settings[name])
            runs_held = PairRuns(diff, held, seed=ctx.seed, **settings[name])
            where = layers + [None]
            full = [carry_at(j, w) for w in where]
            local = [carry_at(j, w, local=True) for w in where]

            def scores(runs, hyps_sets):
                outs = runs.outputs([h.sites(runs.ctx) for h in hyps_sets[0]], batch_size=16)
                return [[runs.score(h.name, h.sites(runs.ctx), o, expected_answers(h, runs.pairs), h)
                         for h, o in zip(hyps, outs)] for hyps in hyps_sets]

            sel_full, sel_local = scores(runs_sel, [full, local])
            held_full, held_local = scores(runs_held, [full, local])
            best = max(range(len(where)), key=lambda i: (nz(sel_local[i].iia_informative), -i))
            entry = {"selected": local[best].name, "selection_digit": [x.to_dict() for x in sel_local],
                     "selection_answer": [x.to_dict() for x in sel_full],
                     "held_out_digit": [x.to_dict() for x in held_local],
                     "held_out_answer": [x.to_dict() for x in held_full]}
            # the same variable at digit j-1's canvas position (digit j compared): layer chosen the same way
            below = [carry_at(j, w, local=True, at="below") for w in layers]
            (sel_below,), (held_below,) = scores(runs_sel, [below]), scores(runs_held, [below])
            best_below = max(range(len(layers)), key=lambda i: (nz(sel_below[i].iia_informative), -i))
            entry.update({"selected_below": below[best_below].name,
                          "selection_below_digit": [x.to_dict() for x in sel_below],
                          "held_out_below_digit": [x.to_dict() for x in held_below]})
            n_draws = 3 if quick else 4
            for hyp, res in ((local[best], held_local[best]), (full[best], held_full[best]),
                             (below[best_below], held_below[best_below])):
                rnd = random_site_baseline(diff, hyp, runs=runs_held, draws=n_draws, seed=ctx.seed, batch_size=16)
                kind = ("below_" if ":below" in hyp.name else "") + hyp.name.split("/")[1]
                entry[f"random_sites_{kind}"] = rnd.to_dict()
            if name == iia_settings[0]:
                runs_ar = PairRuns(ar, held, seed=ctx.seed, do_sample=False)
                entry["ar_twin"] = {}
                for hyp in (carry_at(j, hyp_layer(local[best], n_layers), local=True),
                            carry_at(j, hyp_layer(local[best], n_layers))):
                    ar_res = interchange_accuracy(ar, hyp, runs=runs_ar, batch_size=16)
                    ar_rnd = random_site_baseline(ar, hyp, runs=runs_ar, draws=n_draws, seed=ctx.seed, batch_size=16)
                    entry["ar_twin"][hyp.name] = {"hypothesis": ar_res.to_dict(), "random_sites": ar_rnd.to_dict()}
                # the AR twin at every layer, its layer chosen on its own selection half (the cross-study
                # transparency table compares each model's best intermediate site: case_studies/transparency.py)
                runs_ar_sel = PairRuns(ar, sel, seed=ctx.seed, do_sample=False)
                (ar_sel,), (ar_held,) = scores(runs_ar_sel, [local]), scores(runs_ar, [local])
                ar_best = max(range(len(where)), key=lambda i: (nz(ar_sel[i].iia_informative), -i))
                entry["ar_twin_layers"] = {"selected": local[ar_best].name,
                                           "selection_digit": [x.to_dict() for x in ar_sel],
                                           "held_out_digit": [x.to_dict() for x in ar_held]}
            numbers["iia"][name][f"c{j}"] = entry
    figures["iia"] = iia_figure(iia_rows(numbers), "carry hypotheses: interchange-intervention accuracy (95% Wilson CI)")

    # 4. attention of the answer positions to the prompt's columns (default sampler)
    numbers["attention"] = column_attention(diff, prompts, seed=ctx.seed, **settings[list(settings)[0]])
    figures["column_attention"] = _attention_figure(numbers["attention"])

    return numbers, figures


def run(ctx: StudyContext) -> Report:
    numbers, figures = compute(ctx)
    return Report(TITLE, render(numbers), figures, numbers)


def column_attention(model, problems, *, seed: int, **generation_kwargs) -> dict:
    """How much answer digit j's canvas position attends to column j's prompt digits (`own`), to
    column j-1's (`below`: where the carry into column j comes from) and to the canvas position of
    answer digit j-1 (`canvas_below`: where the model may compute that carry), per layer and head.

    Attention weights are summed over the two digit positions (one for `canvas_below`), averaged over
    problems and the steps where each row is still denoising. Returns `own` `[digit][layer][head]`,
    `below` and `canvas_below` (digits 1..3), and `uniform` = 2 / number of keys (what two positions
    get under uniform attention; half that for one).
    """
    traj = capture(model, prompt_batch([p.prompt for p in problems])["input_ids"], seed=seed,
                   names="blocks.*.attn.hook_pattern", **generation_kwargs)
    patterns = traj.stack("blocks.*.attn.hook_pattern")  # [step, layer, batch, head, canvas_pos, keys]
    weight = traj.active.float()[:, None, :, None]  # [step, 1, batch, 1]

    def mass(query: int, keys: list[int]) -> list[list[float]]:
        m = patterns[..., query, keys].sum(-1)  # [step, layer, batch, head]
        return ((m * weight).sum((0, 2)) / weight.sum((0, 2))).tolist()  # [layer, head]

    first_canvas_key = patterns.shape[-1] - model.config.canvas_length  # keys: cached prompt, then the canvas
    return {"own": [mass(answer_position(j), column_positions(j)) for j in range(N_DIGITS)],
            "below": [mass(answer_position(j), column_positions(j - 1)) for j in range(1, N_DIGITS)],
            "canvas_below": [mass(answer_position(j), [first_canvas_key + answer_position(j - 1)])
                             for j in range(1, N_DIGITS)],
            "uniform": 2 / patterns.shape[-1], "steps": traj.n_steps, "n_problems": len(problems)}


def _attention_figure(att) -> Figure:
    rows = [(f"digit {j}: own column", att["own"][j]) for j in range(N_DIGITS)]
    rows += [(f"digit {j}: column below", att["below"][j - 1]) for j in range(1, N_DIGITS)]
    rows += [(f"digit {j}: canvas digit {j - 1}", att["canvas_below"][j - 1]) for j in range(1, N_DIGITS)]
    grid = torch.tensor([[h for layer in r for h in layer] for _, r in rows])  # [row, layer * head]
    n_heads = len(rows[0][1][0])
    fig = Figure(figsize=(1.2 + 0.45 * grid.shape[1], 0.9 + 0.4 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xticks(range(grid.shape[1]), [f"L{i // n_heads}.H{i % n_heads}" for i in range(grid.shape[1])], rotation=90)
    for i in range(len(rows)):
        for k in range(grid.shape[1]):
            ax.text(k, i, f"{grid[i, k]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if grid[i, k] > 0.6 else "black")
    ax.set_xlabel("layer.head")
    ax.set_ylabel("from answer digit j, to")
    ax.set_title(f"attention from answer digit j to the prompt (uniform = {att['uniform']:.2f})")
    fig.colorbar(im, ax=ax, fraction=0.02, label="attention weight")
    fig.tight_layout()
    return fig


def hyp_layer(hyp, n_layers: int) -> int:
    """The layer of a diffusion carry hypothesis (the self-conditioning one maps to the last layer on AR)."""
    tail = hyp.name.split("@")[1].split("/")[0]
    return int(tail[1:]) if tail.startswith("L") else n_layers - 1

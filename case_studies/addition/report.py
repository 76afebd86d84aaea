"""`render(numbers) -> str`: the addition case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both. `dgt_interp.studies.rerender` rewrites a
report.md from a report.json with it, without rerunning the models.
"""

from __future__ import annotations

from case_studies.common_report import as_json, f3, figure_links, num, probe_section, slug
from dgt_interp.studies import iia_table

TITLE = "Case study: addition — carries and commit order"
TIGHT = "eb=1e-4"  # the tightest entropy bound (the many-step setting) in both the quick and the full run
AR_PHENOMENA = "AR twin (greedy)"


def _signed(x) -> str:
    return "n/a" if x is None or x != x else f"{x:+.2f}"


def _row(name, kind, r) -> str:
    ca, cs, ts, ss, dr = (r[k] for k in ("commit_argmax", "commit_sampler", "token_smearing", "sequence_smearing",
                                         "drafts"))
    pk = ts["peak"]
    return (f"| {name} | {kind} | {num(r['accuracy']):.2f} | {num(ca['mean_steps']):.1f} | "
            f"{ca['rows_with_order']}/{ca['rows']} | {_signed(ca['mean_rho'])} | {cs['rows_with_order']}/{cs['rows']} | "
            f"{_signed(cs['mean_rho'])} | {num(pk['mass']):.3f} (step {pk['step']}, d={pk['offset']:+d}) | "
            f"{num(ss['fraction_steps_smeared']):.3f} | {dr['n_drafts']} ({dr['n_in_canvas']} kept) |")


def phenomena_table(numbers) -> list[str]:
    """One row per sampler setting (DiffusionGemma), then the AR twin's."""
    ph = numbers["phenomena"]
    table = ["| setting | model | accuracy | mean steps | rows with an order (argmax) | mean rho (argmax) | "
             "rows with an order (sampler) | mean rho (sampler) | peak token-smear mass | fraction of steps "
             "sequence-smeared | overwritten drafts |", "|" + "---|" * 11]
    table += [_row(name, "diffusion", ph[name]) for name in numbers["settings"]]
    table.append(_row("greedy", "AR twin", ph[AR_PHENOMENA]))
    return table


def causal_lines(numbers) -> list[str]:
    out = []
    for name, c in numbers["causal"].items():
        loe, eff = c["positions"], c["drafts"]
        out.append(f"| {name} | {len(loe['steps'])} | {num(loe['later_on_earlier']):.3f} | "
                   f"{num(loe['earlier_on_later']):.3f} | {num(loe['self']):.3f} | {eff['n_drafts_tested']} | "
                   f"{f3(eff['fraction_answer_changed'])} |")
    return out


def canvas_flip_figures(numbers) -> list[str]:
    """Names of the canvas-patching figures (one per causal setting)."""
    return [f"canvas_flips_{slug(name)}" for name in numbers["causal"]]


def _by_name(results: list[dict], name: str) -> dict:
    return next(r for r in results if r["name"] == name)


def iia_rows(numbers) -> list[tuple[str, dict]]:
    """(label, IIA dict) per row of the IIA table (and bar of the IIA figure): per setting and carry, the
    selected site on the held-out half (digit, answer, at digit j-1's position), each next to its random
    sites; then the AR twin at the same layer."""
    rows = []
    for name, per_carry in numbers["iia"].items():
        for entry in per_carry.values():
            chosen = (_by_name(entry["held_out_digit"], entry["selected"]),
                      entry["held_out_answer"][[d["name"] for d in entry["held_out_digit"]].index(entry["selected"])],
                      _by_name(entry["held_out_below_digit"], entry["selected_below"]))
            for res in chosen:
                kind = ("below_" if ":below" in res["name"] else "") + res["name"].split("/")[1]
                rows += [(f"{res['name']} [{name}]", res),
                         (f"random sites, {res['name'].split('/')[1]} [{name}]", entry[f"random_sites_{kind}"])]
            for hyp, ar in entry.get("ar_twin", {}).items():
                rows += [(f"{hyp} AR twin", ar["hypothesis"]),
                         (f"random sites, {hyp.split('/')[1]} AR twin", ar["random_sites"])]
    return rows


def _order_sentence(t: dict) -> str:
    """Plain statement of whether a commit order appears (argmax and sampler), with the row counts."""
    a, sm = t["commit_argmax"], t["commit_sampler"]
    arg = (f"The model's own proposals (argmax canvas) show an order in {a['rows_with_order']}/{a['rows']} rows: "
           + ("essentially none; non-chronological order is absent from what the model proposes."
              if a["rows_with_order"] <= 0.1 * a["rows"] else "an order is present."))
    samp = (f" What the sampler keeps shows an order in {sm['rows_with_order']}/{sm['rows']} rows"
            + (", driven by which positions it accepts first (lowest entropy), not by the model's answer." if
               sm["rows_with_order"] > a["rows_with_order"] else "."))
    return arg + samp


def _layer_table(numbers, keys=("held_out_digit", "held_out_answer")) -> list[str]:
    """Held-out IIA (informative pairs) of every candidate site, the `keys` entries joined by " / "."""
    out = []
    for setting, per_carry in numbers["iia"].items():
        for var, e in per_carry.items():
            first = e[keys[0]]
            if not out:
                out = ["| setting | variable | " + " | ".join(d["name"].split("@")[1].split("/")[0].split(":")[0]
                                                           for d in first) + " |",
                       "|---|---|" + "---|" * len(first)]
            cells = [" / ".join(f3(e[k][i]["iia_informative"]) for k in keys) for i in range(len(first))]
            out.append(f"| {setting} | {var} | " + " | ".join(cells) + " |")
    return out


def _attention_lines(att) -> list[str]:
    out = ["| layer | own column: top head, mass | column below: top head, mass | "
           "canvas digit below: top head, mass |", "|---|---|---|---|"]
    n_heads = len(att["own"][0][0])
    for layer in range(len(att["own"][0])):
        cells = []
        for key in ("own", "below", "canvas_below"):  # mean over digits, then the head that reads most
            per_head = [sum(num(d[layer][h]) for d in att[key]) / len(att[key]) for h in range(n_heads)]
            top = max(range(n_heads), key=per_head.__getitem__)
            cells.append(f"H{top}, {per_head[top]:.3f}")
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    return out


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    ph = numbers["phenomena"]
    default = ph[numbers["settings"][0]]
    tight = TIGHT
    t = ph[tight]
    smear_peak = num(t["token_smearing"]["peak"]["mass"])
    att = numbers["attention"]
    lines = [
        "Model: the zoo's `addition-diffusion` (DiffusionGemma) and its AR twin `addition-ar`, on 4-digit + 4-digit "
        f"problems with a 4-digit sum ({numbers['n_phenomena_prompts']} prompts for the phenomena, "
        f"{numbers['n_causal_prompts']} for the causal sweeps, {numbers['n_pairs']} (base, source) pairs per carry "
        "variable for IIA). Definitions: docs/case_studies.md.",
        "",
        "## Findings in one paragraph",
        "",
        f"With the default sampler (entropy bound 0.1) the canvas settles in "
        f"{num(default['commit_argmax']['mean_steps']):.1f} "
        f"steps on average, and the argmax canvas already holds the final token at step 0 for "
        f"{f3(default['commit_argmax']['fraction_committed_at_step0'])} of answer positions. Under the tightest "
        f"setting ({tight}) runs take {num(t['commit_argmax']['mean_steps']):.1f} steps; "
        f"{t['commit_argmax']['rows_with_order']}/{t['commit_argmax']['rows']} rows show any argmax commit order "
        f"(mean Spearman rho {f3(t['commit_argmax']['mean_rho'])}) and "
        f"{t['commit_sampler']['rows_with_order']}/{t['commit_sampler']['rows']} a sampler commit order "
        f"(mean rho {f3(t['commit_sampler']['mean_rho'])}; rho < 0 = right to left). "
        + _order_sentence(t)
        + f" Peak off-centre token-smearing mass: {smear_peak:.3f}; fraction of sequence-smeared steps: "
        f"{f3(t['sequence_smearing']['fraction_steps_smeared'])}; overwritten drafts: {t['drafts']['n_drafts']} "
        f"({t['drafts']['n_in_canvas']} kept in the canvas).",
        "",
        "## Phenomena by sampler setting",
        "",
        *phenomena_table(numbers),
        *probe_section(numbers),
        "",
        "rho = Spearman correlation of commit step with position over answer positions (+1 left to right, "
        "-1 right to left); a row has an order if its positions do not all commit at the same step.",
        "",
        "![commit order](commit_order_tight.png) ![AR](commit_order_ar.png)",
        "",
        "![example](commit_heatmap_example.png)",
        "",
        "![token smearing](token_smearing_tight.png) ![sequence smearing](sequence_smearing_tight.png)",
        "",
        "## Causal effects of canvas positions and drafts",
        "",
        "Each input-canvas position q at each step is resample-ablated (patched from a run on another problem, "
        "same sampler noise); flip rate = fraction of rows whose final token at p changes (max over steps).",
        "",
        "| setting | steps patched | later → earlier | earlier → later | on itself | kept drafts tested | "
        "fraction of drafts whose ablation changes the answer |",
        "|---|---|---|---|---|---|---|",
        *causal_lines(numbers),
        "",
        *figure_links(canvas_flip_figures(numbers), "canvas_flips"),
        "",
        "## Carry hypotheses: interchange-intervention accuracy",
        "",
        "The carry into column j is hypothesised to live at the answer position of digit j (resid_post of one "
        "layer at every step, or the self-conditioning channel there). The layer is chosen on half the pairs and "
        "scored on the other half (selected on the digit-j comparison). `/digit`: only digit j of the output is "
        "compared with the counterfactual; `/answer`: the whole answer (the carry out of column j must also "
        "propagate to higher digits, as in the algorithm). Random sites have the same shape (random layer and "
        "position). Informative pairs: the counterfactual answer differs from the base answer (all pairs here, by "
        "construction: base and source differ in the carry).",
        "",
        iia_table(iia_rows(numbers)),
        "",
        "Held-out IIA (informative pairs) of every candidate site, digit / whole answer. The last layer's "
        "residual at digit j's position determines that digit's logits, so a high score there is expected of "
        "any variable that fixes the digit; the earlier layers and the self-conditioning channel are the test.",
        "",
        *_layer_table(numbers),
        "",
        "The same variable at the canvas position of answer digit j-1 (`:below`), where column j-1 is summed "
        "and from which the carry could be read across by attention; digit j compared (patching there also "
        "moves digit j-1). Held-out IIA (informative pairs) per layer:",
        "",
        *_layer_table(numbers, keys=("held_out_below_digit",)),
        "",
        "![iia](iia.png)",
        "",
        "## Where the answer digits read the prompt (attention)",
        "",
        f"Attention weight from answer digit j's canvas position to column j's two prompt digits (a_j, b_j), "
        f"to column j-1's (the carry into column j comes from there) and to the canvas position of answer digit "
        f"j-1, averaged over {att['n_problems']} problems and their active steps (default "
        f"sampler, recorded under eager attention). Uniform attention would give "
        f"{num(att['uniform']):.3f} to two positions ({num(att['uniform']) / 2:.3f} to one). "
        "Descriptive, not causal: a head can read a column without the answer depending on it (the IIA above is "
        "the causal test).",
        "",
        *_attention_lines(att),
        "",
        "![column attention](column_attention.png)",
    ]
    return "\n".join(lines)


__all__ = ["TITLE", "TIGHT", "render", "phenomena_table", "causal_lines", "canvas_flip_figures", "iia_rows"]

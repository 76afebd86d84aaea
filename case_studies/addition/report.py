"""`render(numbers) -> str`: the addition case study's report text, from its numbers alone.

`numbers` is what `study.compute` returns and `report.json` holds (read back from JSON: NaN is None,
tuples are lists); `render` gives the same text for both. `dgt_interp.studies.rerender` rewrites a
report.md from a report.json with it, without rerunning the models.
"""

from __future__ import annotations

from case_studies.common_report import (as_json, f3, figure_links, interpretation_head, interval, num, probe_section,
                                        qualify, rate, slug, verdict)
from dgt_interp.studies import iia_table

TITLE = "Case study: addition — carries and commit order"
TIGHT = "eb=1e-4"  # the tightest entropy bound (the many-step setting) in both the quick and the full run
AR_PHENOMENA = "AR twin (greedy)"


def _signed(x) -> str:
    return "n/a" if x is None or x != x else f"{x:+.2f}"


def _ci(order: dict) -> str:
    """` [lo, hi]`: the bootstrap 95% interval of a mean rho (absent in reports of older runs, and with < 2 rows)."""
    c = order.get("ci95_rho")
    return f" [{_signed(c[0])}, {_signed(c[1])}]" if c and c[0] is not None else ""


def _row(name, kind, r) -> str:
    ca, cs, ts, ss, dr = (r[k] for k in ("commit_argmax", "commit_sampler", "token_smearing", "sequence_smearing",
                                         "drafts"))
    pk = ts["peak"]
    return (f"| {name} | {kind} | {num(r['accuracy']):.2f} | {num(ca['mean_steps']):.1f} | "
            f"{ca['rows_with_order']}/{ca['rows']} | {_signed(ca['mean_rho'])}{_ci(ca)} | "
            f"{cs['rows_with_order']}/{cs['rows']} | {_signed(cs['mean_rho'])}{_ci(cs)} | {num(pk['mass']):.3f} (step {pk['step']}, d={pk['offset']:+d}) | "
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


def _best(results: list[dict], n_layers: int) -> dict | None:
    """The layer site before the last layer with the highest held-out IIA (informative pairs); None if no such
    layer was scored (a quick run scores one layer). The last layer is left out: its residual fixes the
    digit's logits, so it scores for any digit-determining variable."""
    def layer(r):
        site = r["name"].split("@")[1].split("/")[0].split(":")[0]
        return int(site[1:]) if site.startswith("L") and site[1:].isdigit() else None

    layers = [r for r in results if layer(r) is not None and layer(r) < n_layers - 1]
    if not layers:
        return None
    return max(layers, key=lambda r: num(r["iia_informative"]) if r["iia_informative"] is not None else -1)


def _site(r: dict) -> str:
    return (f"{r['name'].split('@')[1].split('/')[0]} {interval(r['iia_informative'], r['ci95_informative'])} "
            f"(n = {r['n_informative']})")


def interpretation(numbers: dict) -> list[str]:
    """"What this run shows": the study's claims in words, each conditioned on its interval."""
    ph = numbers["phenomena"]
    diff = [ph[k] for k in numbers["settings"]]
    rows = diff[0]["commit_argmax"]["rows"]
    step0 = min(num(v["commit_argmax"]["fraction_committed_at_step0"]) for v in diff)
    argmax_rows = max(v["commit_argmax"]["rows_with_order"] for v in diff)
    lines = [
        f"- **Commit order in the model's proposals:** in every diffusion setting the argmax canvas holds the final "
        f"token at step 0 for at least {f3(step0)} of answer positions; at most {argmax_rows}/{rows} rows show any "
        "argmax order. "
        + ("The model writes the whole answer in its first forward pass: no non-chronological order to explain."
           if argmax_rows <= 0.1 * rows else "Some rows do show an order in the model's own proposals."),
        "- **What the sampler keeps** (rows with an order, mean Spearman rho of commit step with position [95% "
        "bootstrap CI over rows]; rho < 0 = right to left): "
        + "; ".join(f"{k}: {v['commit_sampler']['rows_with_order']}/{rows}, "
                    f"{interval(v['commit_sampler']['mean_rho'], v['commit_sampler'].get('ci95_rho'))}, "
                    + verdict(v["commit_sampler"].get("ci95_rho"), 0.0, n=v["commit_sampler"]["rows_with_order"],
                              numbers=numbers, what="rows", above="left to right", below="right to left")
                    for k, v in ph.items() if k in numbers["settings"] and v["commit_sampler"]["rows_with_order"])
        + (". With no order in the argmax canvas, that order is which positions the sampler accepts first, not the "
           "model's answer." if argmax_rows <= 0.1 * rows else "."),
    ]
    peak = max(num(v["token_smearing"]["peak"]["mass"]) for v in diff)
    seq = max(num(v["sequence_smearing"]["fraction_steps_smeared"]) for v in diff)
    ar = ph[AR_PHENOMENA]
    lines.append(f"- **Token / sequence smearing: {'absent' if peak < 0.05 and seq == 0 else 'present'}** on the "
                 f"diffusion model (peak off-centre token mass {peak:.4f}, fraction of sequence-smeared steps "
                 f"{seq:.3f}, the largest over settings); the AR twin, scored the same way: "
                 f"{num(ar['token_smearing']['peak']['mass']):.3f} and "
                 f"{num(ar['sequence_smearing']['fraction_steps_smeared']):.3f}.")
    drafts = sum(v["drafts"]["n_drafts"] for v in diff)
    lines.append(f"- **Intermediate-context reasoning: {'absent' if drafts == 0 else 'drafts occur'}** "
                 f"({drafts} overwritten drafts over all settings).")
    for setting, per_carry in numbers["iia"].items():
        parts = []
        for var, e in per_carry.items():
            n_layers = len(numbers["attention"]["own"][0])  # [digit][layer][head]
            own, below = _best(e["held_out_digit"], n_layers), _best(e["held_out_below_digit"], n_layers)
            if own is None or below is None:
                parts.append(f"{var}: no layer before the last was scored in this run")
                continue
            lo_b, hi_o = below["ci95_informative"][0], own["ci95_informative"][1]
            if lo_b is not None and hi_o is not None and lo_b > hi_o:
                where = qualify(numbers, f"{below['n_informative']} pairs", "held more at the lower digit's position")
            elif below["ci95_informative"][0] is not None and below["ci95_informative"][0] > 0.5:
                where = qualify(numbers, f"{below['n_informative']} pairs", "held at the lower digit's position")
            else:
                where = f"the two positions are not separated at this n (n = {below['n_informative']})"
            parts.append(f"{var}: own position, best layer before the last {_site(own)}; digit j-1's position "
                         f"{_site(below)}; random sites {f3(e['random_sites_digit']['mean_iia_informative'], 2)}: "
                         f"{where}")
        lines.append(f"- **Where the carry into column j is held ({setting}; held-out IIA [95% Wilson CI]):** "
                     + "; ".join(parts) + ". At the last layer digit j's own position scores for any variable "
                     "that fixes the digit, so it is left out here (tables below).")
    n = numbers["n_phenomena_prompts"]
    acc = {k: rate(round(num(v["accuracy"]) * n), n) for k, v in ((numbers["settings"][0], diff[0]), ("AR", ar))}
    lines.append(f"- **Accuracy on the phenomena prompts:** DiffusionGemma (default) "
                 f"{interval(acc[numbers['settings'][0]]['rate'], acc[numbers['settings'][0]]['ci95'])}, the AR twin "
                 f"{interval(acc['AR']['rate'], acc['AR']['ci95'])} (n = {n}).")
    return lines


def render(numbers: dict) -> str:
    """The report's markdown body from `numbers` (live or read back from report.json)."""
    numbers = as_json(numbers)
    att = numbers["attention"]
    lines = [
        "Model: the zoo's `addition-diffusion` (DiffusionGemma) and its AR twin `addition-ar`, on 4-digit + 4-digit "
        f"problems with a 4-digit sum ({numbers['n_phenomena_prompts']} prompts for the phenomena, "
        f"{numbers['n_causal_prompts']} for the causal sweeps, {numbers['n_pairs']} (base, source) pairs per carry "
        "variable for IIA). Definitions: docs/case_studies.md.",
        "",
        *interpretation_head(numbers),
        *interpretation(numbers),
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


__all__ = ["TITLE", "TIGHT", "render", "interpretation", "phenomena_table", "causal_lines", "canvas_flip_figures", "iia_rows"]

"""The hop-chain study's hypothesis as code: each hop reads the hop drafted to its right.

Problems (`dgt_interp.tasks.HOP_CHAIN`): prompt `<bos>3>5,5>1,1>4,0>2,4>0,2>3,?3=` (a permutation f of
the digits 0-5 as pairs in random order, then the query x), answer `415` = f(f(f(x))) f(f(x)) f(x), then
EOS. Every prompt has the same length, so canvas position p is answer character p in every row:
h3 = f^3(x) at position 0, h2 = f^2(x) at 1, h1 = f(x) at 2, EOS at 3.

High-level causal model (`HOP_MODEL`): inputs f (a dict) and x; h1 = f(x); h2 = f(h1); h3 = f(h2);
answer = f"{h3}{h2}{h1}". One lookup (find the pair whose key is q, copy its value) takes two attention
layers, so a 2-layer DiffusionGemma can compute h1 from the prompt at step 0 but not h2 or h3: the
hypothesis is that h2 is computed at a later step from the **drafted** h1 (the canvas token at
position 2, or the self-conditioning logits there), and h3 from the drafted h2.

Alignment `h1_at(channel, steps, pos)`: the variable h1 lives in `channel` ("canvas": the token the
decoder reads, `hook_embed`; "selfcond": the previous step's logits, `self_cond.hook_logits_in`;
"both"; "L0": the residual after block 0, `blocks.0.hook_resid_post`) at canvas position `pos`
(default 2, h1's own) at `steps` ("all" | "step1": only the second denoising step, the first that
reads a draft). Interchange: patch those sites from a run on a source problem whose h1 differs; the
base's own map f then gives the counterfactual h2 = f(h1_src) and h3 = f(h2). `compare="next"` checks
the digit to the left (h2, position 1), `"chain"` both digits left of it (h3 h2). f is a permutation,
so h1_src != h1 gives another h2 and h3: every pair is informative. The same sites at the other
positions (0, 1, 3) are the position controls; random sites of the same shape the standard baseline.

AR twin: it writes h3 first. `h1_at("canvas")` aligns h1 to the token it reads after writing h1
(generation step 3), after h2 and h3 are written, so IIA is 0 by construction; `h1_at("L0")` aligns
h1 to its residual after block 0 at the position that writes h3 (the prompt's last, step 0): whether
it computes f(x) on the way to h3.
"""

from __future__ import annotations

import random

from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis, SiteContext
from dgt_interp.patching import Site
from dgt_interp.tasks import HOP_CHAIN, Problem
from dgt_interp.tasks.library import HOP_COUNT, parse_hop

H3_POS, H2_POS, H1_POS, EOS_POS = 0, 1, 2, 3
HOP_POSITIONS = {"h3": H3_POS, "h2": H2_POS, "h1": H1_POS}
CHANNELS = {"canvas": ("hook_embed",), "selfcond": ("self_cond.hook_logits_in",),
            "both": ("hook_embed", "self_cond.hook_logits_in"), "L0": ("blocks.0.hook_resid_post",)}
STEPS = ("all", "step1")
COMPARES = {"next": (H2_POS,), "chain": (H3_POS, H2_POS)}


def _inputs(problem: Problem) -> dict:
    f, x = parse_hop(problem.prompt)
    return {"f": f, "x": x}


HOP_MODEL = CausalModel(
    inputs=_inputs,
    variables={"h1": lambda v: v["f"][v["x"]], "h2": lambda v: v["f"][v["h1"]], "h3": lambda v: v["f"][v["h2"]],
               "answer": lambda v: f"{v['h3']}{v['h2']}{v['h1']}"},
    output="answer")
assert HOP_COUNT == 3  # the model above writes three hops


def h1_at(channel: str = "canvas", steps: str = "step1", pos: int = H1_POS, compare: str = "next") -> Hypothesis:
    """h1 = f(x) lives in `channel` at canvas position `pos` at `steps` (see the module docstring)."""
    if channel not in CHANNELS:
        raise CaseStudyError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
    if steps not in STEPS:
        raise CaseStudyError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
    if compare not in COMPARES:
        raise CaseStudyError(f"compare must be one of {', '.join(COMPARES)}, got {compare!r}")
    if pos not in (H3_POS, H2_POS, H1_POS, EOS_POS):
        raise CaseStudyError(f"pos must be a canvas position 0..{EOS_POS}, got {pos!r}")
    step = None if steps == "all" else 1

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if channel == "L0":  # the position that writes h3: the prompt's last, at step 0
                return [Site("blocks.0.hook_resid_post", step=0, pos=ctx.prompt_length - 1)]
            # the token at answer position `pos` is read at generation step pos + 1, after it is written
            return [Site("hook_embed", step=pos + 1, pos=0)] if pos + 1 < ctx.n_steps else []
        return [Site(name, step=step, pos=pos) for name in CHANNELS[channel]]

    own = "" if pos == H1_POS else f"@pos{pos}"
    return Hypothesis(f"h1@{channel}:{steps}{own}/{compare}", HOP_MODEL, ("h1",), sites,
                      f"h1 = f(x) lives in {channel} at canvas position {pos}, {steps} steps; compared on "
                      + ("h2" if compare == "next" else "h3 h2"), output_positions=COMPARES[compare])


def hop_pairs(n_pairs: int, seed: int = 0, pool: list[Problem] | None = None) -> list[tuple[Problem, Problem]]:
    """(base, source) held-out pairs whose h1 differ (so every pair is informative for h2 and h3); drawn
    from `pool` if given (e.g. the problems a model answers correctly), else from the held-out split."""
    rng = random.Random(f"hop-pairs:{seed}")
    problems = list(pool) if pool is not None else HOP_CHAIN.problems("test", 4 * n_pairs + 8, seed=seed)
    if len({HOP_MODEL.run(p)["h1"] for p in problems}) < 2:
        raise CaseStudyError("the pool needs problems with at least two different h1 = f(x) values")
    out = []
    while len(out) < n_pairs:
        base, src = rng.choice(problems), rng.choice(problems)
        if HOP_MODEL.run(base)["h1"] != HOP_MODEL.run(src)["h1"]:
            out.append((base, src))
    return out


__all__ = ["H3_POS", "H2_POS", "H1_POS", "EOS_POS", "HOP_POSITIONS", "CHANNELS", "STEPS", "COMPARES", "HOP_MODEL",
           "h1_at", "hop_pairs"]

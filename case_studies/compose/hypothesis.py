"""The compose study's hypothesis as code: each answer digit is computed from the digit drafted to its right.

Problems (`dgt_interp.tasks.COMPOSE`): prompt `<bos>+#+++##+>?3=` (ten maps o_0..o_9: '+' = add one mod 10,
'#', '>', '?' = fixed scrambles; then the start digit s), answer `6554320216`: c_j = (o_j o o_{j+1} o ... o
o_9)(s) at canvas position j, EOS at position 10. Every prompt has the same length, so canvas position j is answer digit j
in every row, and map o_j sits at prompt position j.

High-level causal model (`COMPOSE_MODEL`): c_10 = s; c_j = o_j(c_{j+1}) for j = 9..0; answer = c_0 ... c_9.
From the prompt alone, c_j needs 10 - j maps applied in turn (the maps generate a non-solvable group: no
shortcut; and 4^10 map sequences are too many to memorise); from the drafted right neighbour it needs one.
The hypothesis: a 2-layer DiffusionGemma computes the rightmost digits at the first step and each c_j to
their left at a later step from the **drafted** c_{j+1} (the canvas token at position j + 1, or the
self-conditioning logits there). The headline link is c_6, four maps from s.

Alignment `link_at(link, channel, steps, pos, compare)`: the variable c_link lives in `channel` ("canvas":
the token the decoder reads, `hook_embed`; "selfcond": the previous step's logits,
`self_cond.hook_logits_in`; "both"; "L0": the residual after block 0, `blocks.0.hook_resid_post`) at canvas
position `pos` (default link, its own) at `steps` ("all" | "step1": only the second denoising step, the first
that reads a draft). Interchange: patch those sites from a run on a source problem whose c_link differs; the
base's own maps then give the counterfactual c_j = (o_j o ... o o_{link-1})(c_link_src) for j < link.
`compare="next"` checks digit link - 1, `"chain"` every digit left of link. The maps are bijections, so a
different c_link gives a different c_{link-1}: every pair is informative. The same sites at other positions
are the position controls; random sites of the same shape the standard baseline.

AR twin: it writes c_0 (all ten maps applied to s) first. `link_at(..., "canvas")` aligns c_link to the
token it reads after writing it, after every digit to its left is written, so IIA is 0 by construction;
`link_at(..., "L0")` aligns c_link to its residual after block 0 where it writes c_0 (the prompt's last
position, step 0): whether it computes the partial composition on the way to c_0.
"""

from __future__ import annotations

import random

from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis, SiteContext
from dgt_interp.patching import Site
from dgt_interp.tasks import COMPOSE, Problem
from dgt_interp.tasks.library import COMPOSE_OPS, COMPOSE_STEPS

N = COMPOSE_STEPS
EOS_POS = N
HEADLINE_LINK = 6  # c_6: four maps from s, past what one pass of a 2-layer model composes; c_5 reads its draft
CHANNELS = {"canvas": ("hook_embed",), "selfcond": ("self_cond.hook_logits_in",),
            "both": ("hook_embed", "self_cond.hook_logits_in"), "L0": ("blocks.0.hook_resid_post",)}
STEPS = ("all", "step1")
COMPARES = ("next", "chain")


def _inputs(problem: Problem) -> dict:
    body = problem.prompt.rstrip("=")
    ops, start = body[:-1], body[-1:]
    if len(ops) != N or any(o not in COMPOSE_OPS for o in ops) or not start.isdigit():
        raise CaseStudyError(f"a compose prompt is {N} maps ({', '.join(COMPOSE_OPS)}), a start digit, then '=', "
                             f"got {problem.prompt!r}")
    return {**{f"o{j}": o for j, o in enumerate(ops)}, f"c{N}": int(start)}


def _link(j: int):
    return lambda v: COMPOSE_OPS[v[f"o{j}"]][v[f"c{j + 1}"]]


COMPOSE_MODEL = CausalModel(
    inputs=_inputs,
    variables={**{f"c{j}": _link(j) for j in reversed(range(N))},
               "answer": lambda v: "".join(str(v[f"c{j}"]) for j in range(N))},
    output="answer")


def compared_positions(link: int, compare: str) -> tuple[int, ...]:
    """The answer positions a `link_at(link, ..., compare)` hypothesis scores: link - 1, or every one left of link."""
    return (link - 1,) if compare == "next" else tuple(range(link))


def link_at(link: int = HEADLINE_LINK, channel: str = "both", steps: str = "step1", pos: int | None = None,
            compare: str = "next", model: CausalModel | None = None, span: int = 1) -> Hypothesis:
    """c_link lives in `channel` at canvas positions pos..pos + span - 1 (default: `link` alone) at `steps` (see
    the module docstring). span = N - link patches the whole drafted suffix c_link..c_9: with a source that
    shares the base's maps (`compose_pairs(same_maps=True)`) that suffix is a consistent state to continue from.
    `model`: the causal model (default `COMPOSE_MODEL`; a task that writes more after the ten states, such as
    compose_odd, passes its own, with the same variables c0..c10)."""
    if not isinstance(link, int) or not 1 <= link <= N - 1:
        raise CaseStudyError(f"link must be a canvas position 1..{N - 1} (it needs a digit to its left), got {link!r}")
    if channel not in CHANNELS:
        raise CaseStudyError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
    if steps not in STEPS:
        raise CaseStudyError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
    if compare not in COMPARES:
        raise CaseStudyError(f"compare must be one of {', '.join(COMPARES)}, got {compare!r}")
    pos = link if pos is None else pos
    if not isinstance(pos, int) or not 0 <= pos <= EOS_POS:
        raise CaseStudyError(f"pos must be a canvas position 0..{EOS_POS}, got {pos!r}")
    if not isinstance(span, int) or span < 1 or pos + span - 1 > EOS_POS:
        raise CaseStudyError(f"span must be >= 1 with pos + span - 1 <= {EOS_POS}, got pos {pos}, span {span!r}")
    positions = range(pos, pos + span)
    step = None if steps == "all" else 1

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            if channel == "L0":  # the position that writes c_0: the prompt's last, at step 0
                return [Site("blocks.0.hook_resid_post", step=0, pos=ctx.prompt_length - 1)]
            # the token at answer position p is read at generation step p + 1, after it is written
            return [Site("hook_embed", step=p + 1, pos=0) for p in positions if p + 1 < ctx.n_steps]
        return [Site(name, step=step, pos=p) for p in positions for name in CHANNELS[channel]]

    own = "" if (pos, span) == (link, 1) else f"@pos{pos}" if span == 1 else f"@pos{pos}-{pos + span - 1}"
    return Hypothesis(f"c{link}@{channel}:{steps}{own}/{compare}", model or COMPOSE_MODEL, (f"c{link}",), sites,
                      f"c{link} lives in {channel} at canvas positions {pos}-{pos + span - 1}, {steps} steps; compared on "
                      + ("the digit to its left" if compare == "next" else "every digit to its left"),
                      output_positions=compared_positions(link, compare))


def compose_pairs(n_pairs: int, seed: int = 0, link: int = HEADLINE_LINK, pool: list[Problem] | None = None,
                  same_maps: bool = False, model: CausalModel | None = None) -> list[tuple[Problem, Problem]]:
    """(base, source) pairs whose c_link differ (every pair informative); bases drawn from `pool` if given (e.g.
    the problems a model answers correctly), else from the held-out split. `same_maps`: the source is the base's
    maps with another start digit (every such source differs in every state: the maps are bijections), its
    answer from `model` (default `COMPOSE_MODEL`); else sources are drawn from the same pool."""
    rng = random.Random(f"compose-pairs:{seed}:{link}:{same_maps}")
    model = model or COMPOSE_MODEL
    problems = list(pool) if pool is not None else COMPOSE.problems("test", 4 * n_pairs + 8, seed=seed)
    key = f"c{link}"
    if not same_maps and len({model.run(p)[key] for p in problems}) < 2:
        raise CaseStudyError(f"the pool needs problems with at least two different {key} values")
    out = []
    while len(out) < n_pairs:
        base = rng.choice(problems)
        if same_maps:
            start = int(base.prompt[-2])
            prompt = base.prompt[:-2] + str(rng.choice([d for d in range(10) if d != start])) + "="
            src = Problem(prompt, model.run(Problem(prompt, ""))[model.output])
        else:
            src = rng.choice(problems)
        if model.run(base)[key] != model.run(src)[key]:
            out.append((base, src))
    return out


__all__ = ["N", "EOS_POS", "HEADLINE_LINK", "CHANNELS", "STEPS", "COMPARES", "COMPOSE_MODEL", "compared_positions",
           "link_at", "compose_pairs"]

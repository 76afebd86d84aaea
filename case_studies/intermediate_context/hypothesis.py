"""The intermediate-context study's hypothesis as code: the count is read off the drafted list.

The count is written first (`3:753`) but depends on the list written after it. An AR model must
count before it lists; a diffusion model can draft the list and correct the count from it, as in
the published example (a wrong count, then the list, then the corrected count).

High-level model `COUNT_MODEL` (`case_studies.count_common`): m_i = lo <= x_i <= hi, list = the
members in input order, **count := len(list)**, answer = f"{count}:{list}". The intermediate variable
`list` is aligned by `list_at(channel, steps)` to the list region of the canvas (positions 2..L-1:
the drafted list and where its EOS lands): the drafted tokens the decoder reads there (`hook_embed`,
"canvas"), the previous step's logits there (`self_cond.hook_logits_in`, "selfcond"), or both, at
`steps` = every step or one intermediate step. Interchange: patch those sites from a run on a
source problem with another count; if the count position reads the drafted list, the emitted count
follows the source's list length (`compare="count"`; `"answer"`: the whole answer follows the source).
Control `count_draft_at(channel)`: the same channels at the count position itself (the count's own
draft). AR twin: the list tokens the AR model reads (its input embeddings at generation steps 3..),
all written after the count, so the count cannot follow them (IIA 0 on the count by construction).
"""

from __future__ import annotations

from case_studies.count_common import COUNT_MODEL, COUNT_POS, LIST_START, CountHypothesis, count_pairs
from dgt_interp.causal import CaseStudyError, SiteContext
from dgt_interp.patching import Site

CHANNELS = {"canvas": ("hook_embed",), "selfcond": ("self_cond.hook_logits_in",),
            "both": ("hook_embed", "self_cond.hook_logits_in")}
STEPS = ("all", "step1")


def _steps(steps: str):
    if steps not in STEPS:
        raise CaseStudyError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
    return None if steps == "all" else 1


def list_at(channel: str = "both", steps: str = "all", compare: str = "count") -> CountHypothesis:
    """`list` (hence count := len(list)) lives in `channel` at the list positions 2..L-1, at `steps`
    ("all" | "step1": the second denoising step only, the first that reads a draft)."""
    if channel not in CHANNELS:
        raise CaseStudyError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
    step = _steps(steps)

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":  # answer token j is read at generation step j + 1; the list starts at j = 2
            return [Site("hook_embed", step=s, pos=0) for s in range(LIST_START + 1, ctx.n_steps)]
        return [Site(name, step=step, pos=p) for name in CHANNELS[channel]
                for p in range(LIST_START, ctx.canvas_length)]

    return CountHypothesis(f"list@{channel}:{steps}/{compare}", COUNT_MODEL, ("list",), sites,
                           f"the drafted list = {channel} at canvas positions {LIST_START}.., {steps} steps; "
                           f"count := len(list); compared on the {compare}", compare=compare)


def count_draft_at(channel: str = "both", compare: str = "count") -> CountHypothesis:
    """Control: the count lives in its own draft (`channel` at the count position, all steps)."""
    if channel not in CHANNELS:
        raise CaseStudyError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")

    def sites(ctx: SiteContext):
        if ctx.kind == "ar":
            return [Site("hook_embed", step=1, pos=0)]
        return [Site(name, step=None, pos=COUNT_POS) for name in CHANNELS[channel]]

    return CountHypothesis(f"n@count-draft:{channel}/{compare}", COUNT_MODEL, ("n",), sites,
                           f"the count = its own draft ({channel} at canvas position 0), all steps; compared on the "
                           f"{compare}", compare=compare)


def context_pairs(n_pairs: int, seed: int = 0):
    """(base, source) pairs with non-empty lists and different counts (`count_common.count_pairs`)."""
    return count_pairs(n_pairs, seed, tag="intermediate-context")


__all__ = ["CHANNELS", "STEPS", "list_at", "count_draft_at", "context_pairs"]

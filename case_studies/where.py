"""Where a hypothesis places a variable on DiffusionGemma, shared by the studies that align one.

`where` is a layer index (that block's `hook_resid_post`), "selfcond" (the self-conditioning logits
the decoder reads, `self_cond.hook_logits_in`) or "canvas" (the drafted canvas token it reads,
`hook_embed`). The hypothesis names tag it `L{layer}` / `selfcond` / `canvas`.
"""

from __future__ import annotations

from dgt_interp.causal import CaseStudyError

WHERE_SPECIAL = {"selfcond": "self_cond.hook_logits_in", "canvas": "hook_embed"}


def check_where(where) -> None:
    """One-line error unless `where` is a layer index, "selfcond" or "canvas"."""
    if not isinstance(where, int) and where not in WHERE_SPECIAL:
        raise CaseStudyError(f"where must be a layer index, 'selfcond' or 'canvas', got {where!r}")


def where_tag(where) -> str:
    """`L{layer}`, "selfcond" or "canvas": the tag in hypothesis names."""
    return f"L{where}" if isinstance(where, int) else where


def where_hook(where) -> str:
    """The DiffusionGemma hook name `where` reads."""
    return WHERE_SPECIAL.get(where, f"blocks.{where}.hook_resid_post")


__all__ = ["WHERE_SPECIAL", "check_where", "where_tag", "where_hook"]

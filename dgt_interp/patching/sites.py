"""Where a patch goes: `Site` = (hook name, step, positions, heads) plus the kind of intervention.

Steps, positions and heads take an int, a slice, a list of ints, or None (= all), normalised by the
one selection normaliser every module uses (`dgt_interp.selection.select`). `layer_sites(p, l, step)`
lists the sites that together make a complete cut of decoder layer l at a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dgt_interp.errors import DgtInterpError
from dgt_interp.patching.interventions import Intervention, Replace
from dgt_interp.selection import Index, select


class PatchingError(DgtInterpError, ValueError):
    """Bad patching arguments (one-line message that says what to do)."""


@dataclass(frozen=True)
class Site:
    """One patch: at hook `name`, denoising `step`, positions `pos`, heads `head`, apply `intervention`.

    `step`, `pos` and `head` take an int, a slice, a list of ints, or None (= all). `head` needs a
    hook with a head axis (`[batch, pos, head, d_head]`, e.g. `blocks.0.attn.hook_z`). The default
    intervention `Replace()` writes the clean (source) run's activation; see
    `dgt_interp.patching.interventions` for `Zero`, `Mean`, `AddVector`.
    """

    name: str
    step: Index = None
    pos: Index = None
    head: Index = None
    intervention: Intervention = field(default_factory=Replace)


def indices(spec: Index, bound: int, what: str, hint: str) -> list[int]:
    """`select` over `range(bound)` with `PatchingError` (the patching modules' error type)."""
    return select(spec, bound, what, hint, PatchingError)


def layer_sites(p, layer: int, step: Index = None, *, prompt: bool = True) -> list[Site]:
    """Every site of decoder layer `layer` at `step` (None = every step): a complete cut of the run there.

    On DiffusionGemma the canvas reaches layer `layer` as `blocks.{layer}.hook_resid_pre` (all
    positions), and the prompt as the encoder KV cache: the prompt's residual at that layer enters
    the decoder only through the cached keys/values of layers `layer`..L-1
    (`blocks.{l}.hook_cache_k/v`), so with `prompt=True` those are patched too. Patched from the
    clean run, the step's decoder output is the clean one exactly (at every step: the clean run).
    `prompt=False` gives the canvas side alone. AR twin: the prompt is step 0's positions, so the
    residual alone is the whole layer. `p` is a `Patching`.
    """
    n_layers = p.model.config.get_text_config().num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise PatchingError(f"layer {layer!r} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    sites = [Site(f"blocks.{layer}.hook_resid_pre", step)]
    if prompt and p.kind == "diffusion":
        sites += [Site(f"blocks.{l}.hook_cache_{kv}", step) for l in range(layer, n_layers) for kv in "kv"]
    return sites


__all__ = ["PatchingError", "Site", "Index", "indices", "layer_sites"]

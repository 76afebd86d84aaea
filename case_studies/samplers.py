"""The sampler settings the case studies run, defined once (name -> `generate` kwargs).

Tighter entropy bounds accept fewer tokens per step (more steps); a stricter stop (stable for 3
steps and mean entropy < 1e-4) or no early stop (confidence threshold 1e-9) keeps denoising after
the argmax settles; a hotter temperature keeps entropy up. Every setting leaves the rest of the
model's generation config as it is (the zoo models use DiffusionGemma's defaults: 48 steps,
temperature 0.8 -> 0.4). A study picks its grid by name, optionally under its own labels.
"""

from __future__ import annotations

from dgt_interp.sampling import entropy_bound_kwargs as eb
from dgt_interp.sampling import sampler_settings

STRICT_STOP = dict(stability_threshold=3, confidence_threshold=1e-4)
HOT = dict(t_min=1.2, t_max=1.6)

SETTINGS: dict[str, dict] = {
    "eb=0.1 (default)": eb(0.1),
    "eb=0.01": eb(0.01),
    "eb=1e-3": eb(1e-3),
    "eb=1e-4": eb(1e-4),
    "eb=1e-4, T=1.2-1.6": eb(1e-4, **HOT),
    "eb=1e-4, strict stop": eb(1e-4, **STRICT_STOP),
    "eb=1e-4, strict stop, T=1.2-1.6": eb(1e-4, **HOT, **STRICT_STOP),
    "eb=1e-4, no early stop": eb(1e-4, confidence_threshold=1e-9),
    "gentle": sampler_settings("gentle"),  # entropy bound 0.02, 96 steps, temperature 1.0 -> 0.5
}


def sampler_grid(names, *, labels: dict[str, str] | None = None,
                 overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """`{label: generate kwargs}` for the catalogued settings `names`, in order (label = the name unless
    `labels` renames it; `overrides[name]` adds or replaces kwargs, e.g. a step cap for quick runs)."""
    labels, overrides = labels or {}, overrides or {}
    return {labels.get(n, n): {**SETTINGS[n], **overrides.get(n, {})} for n in names}


__all__ = ["SETTINGS", "STRICT_STOP", "HOT", "sampler_grid"]

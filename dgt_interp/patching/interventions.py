"""The kind of intervention at a patching site, as an object (as in pyvene's `Intervention`).

An intervention maps the selected slice of the activation in the run being patched (`current`) and
the same slice of the clean (source) run (`clean`, `[batch, ...]`) to what the run gets instead:

- `Replace()`: the clean run's value (activation patching; the default of every `Site`);
- `Zero()`: zeros (zero ablation);
- `Mean()`: the clean run's value averaged over the prompt batch (mean ablation over the prompts);
- `AddVector(vector, scale=1.0)`: `current + scale * vector` (steering; `vector` broadcasts over
  the slice's trailing axes, e.g. `[d_model]`);
- `NextUlp()`: `current` moved up by one float ulp (`torch.nextafter`): what
  `Patching.rounding_noise` uses to measure float-rounding noise.

Write your own by subclassing `Intervention` and implementing `__call__(current, clean)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Intervention:
    """Base class: `__call__(current, clean) -> replacement`, all of the selected slice's shape."""

    def __call__(self, current: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Replace(Intervention):
    """Write the clean (source) run's activation: classic activation patching."""

    def __call__(self, current, clean):
        return clean


@dataclass(frozen=True)
class Zero(Intervention):
    """Write zeros (zero ablation)."""

    def __call__(self, current, clean):
        return torch.zeros_like(current)


@dataclass(frozen=True)
class Mean(Intervention):
    """Write the clean run's activation averaged over the prompt batch (mean ablation over prompts)."""

    def __call__(self, current, clean):
        return clean.float().mean(0, keepdim=True).to(clean.dtype).expand_as(current)


@dataclass(frozen=True, eq=False)
class AddVector(Intervention):
    """Add `scale * vector` to the current activation (steering); `vector` broadcasts over the slice."""

    vector: torch.Tensor
    scale: float = 1.0

    def __call__(self, current, clean):
        return current + self.scale * self.vector.to(current.device, current.dtype)


@dataclass(frozen=True)
class NextUlp(Intervention):
    """Move the current activation up by one float ulp (`torch.nextafter` towards +inf)."""

    def __call__(self, current, clean):
        return torch.nextafter(current, torch.full_like(current, math.inf))


__all__ = ["Intervention", "Replace", "Zero", "Mean", "AddVector", "NextUlp"]

"""Opaque serial depth: the longest chain of dependent operations between interpretable states.

A port of google-deepmind/serial_depth (Brown-Cohen, Lindner, Shah, arXiv 2603.09786) from JAX jaxprs
to traced PyTorch aten operations, plus what the DiffusionGemma transparency comparison needs:

- `serial_depth(fn, *inputs)` traces one call (on meta for full-size models) and returns its depth,
  or a `DepthReport` (per-op breakdown, deviations, unknown ops) with `return_report=True`;
- `interpretable(t)` marks a state a person can read (tokens): depth restarts at 0 after it;
- `compose` chains passes through the state they carry (KV cache, self-conditioning logits);
- `presets` builds the released 26B-A4B architectures on meta and compares them (`dgt-interp depth`).

See docs/depth.md for the cost table and every deviation from the reference rules.
"""

from .compose import (
    ARGenerationDepth,
    DepthMap,
    DiffusionGenerationDepth,
    DiffusionStepMaps,
    ar_generation_depth,
    ar_generation_depth_bruteforce,
    ar_pass_depth,
    diffusion_generation_depth,
    diffusion_generation_depth_bruteforce,
    diffusion_step_maps,
    trace_map,
)
from .rules import RULE_SETS
from .tracer import (
    CONST,
    Depth,
    DepthReport,
    DepthTracer,
    UnknownOpError,
    current_tracer,
    dense_experts,
    interpretable,
    serial_depth,
)

__all__ = [
    "serial_depth", "interpretable", "DepthTracer", "DepthReport", "Depth", "CONST", "UnknownOpError",
    "current_tracer", "dense_experts", "RULE_SETS",
    "DepthMap", "trace_map", "ARGenerationDepth", "ar_generation_depth", "ar_generation_depth_bruteforce",
    "ar_pass_depth", "DiffusionGenerationDepth", "DiffusionStepMaps", "diffusion_step_maps",
    "diffusion_generation_depth", "diffusion_generation_depth_bruteforce",
]

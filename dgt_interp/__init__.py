"""dgt_interp: mechanistic interpretability for diffusion language models (DiffusionGemma first).

The public API, importable from the top level (`from dgt_interp import capture, Trajectory, ...`).
Importing `dgt_interp` stays cheap: each name loads its module (torch, TransformerLens) on first use.
The layers and what each module holds: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # core: runs and what they record
    "capture": "dgt_interp.capturing",
    "estimate_bytes": "dgt_interp.capturing",
    "Trajectory": "dgt_interp.trajectory",
    "list_names": "dgt_interp.names",
    "describe_names": "dgt_interp.names",
    "ReplayedNoise": "dgt_interp.sampling",
    "sampler_settings": "dgt_interp.sampling",
    "load_model": "dgt_interp.models",
    "load_tokenizer": "dgt_interp.tokenizer",
    "prompt_batch": "dgt_interp.tokenizer",
    "DgtInterpError": "dgt_interp.errors",
    # analysis
    "LogitLens": "dgt_interp.lens",
    "TunedLens": "dgt_interp.lens",
    "Patching": "dgt_interp.patching",
    "Site": "dgt_interp.patching",
    "LogitDiff": "dgt_interp.patching",
    "attribution_patch": "dgt_interp.attribution",
    "detect_phenomena": "dgt_interp.phenomena",
    "register_probe": "dgt_interp.phenomena",
    "serial_depth": "dgt_interp.depth",
    "interpretable": "dgt_interp.depth",
    # studies
    "CaseStudy": "dgt_interp.studies",
    "register_case_study": "dgt_interp.studies",
    "run_study": "dgt_interp.studies",
}
_RENAMED = {"register_case_study": "register"}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what IDEs and type checkers see
    from dgt_interp.attribution import attribution_patch
    from dgt_interp.capturing import capture, estimate_bytes
    from dgt_interp.depth import interpretable, serial_depth
    from dgt_interp.errors import DgtInterpError
    from dgt_interp.lens import LogitLens, TunedLens
    from dgt_interp.models import load_model
    from dgt_interp.names import describe_names, list_names
    from dgt_interp.patching import LogitDiff, Patching, Site
    from dgt_interp.phenomena import detect_phenomena, register_probe
    from dgt_interp.sampling import ReplayedNoise, sampler_settings
    from dgt_interp.studies import CaseStudy, run_study
    from dgt_interp.studies import register as register_case_study
    from dgt_interp.tokenizer import load_tokenizer, prompt_batch
    from dgt_interp.trajectory import Trajectory


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'dgt_interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])

"""dgt_interp: mechanistic interpretability for diffusion language models (DiffusionGemma first)."""

__version__ = "0.1.0"

# Lazy exports (importing dgt_interp stays cheap; torch/TL load on first use).
_LAZY = {
    "capture": ("dgt_interp.capturing", "capture"),
    "estimate_bytes": ("dgt_interp.capturing", "estimate_bytes"),
    "Trajectory": ("dgt_interp.trajectory", "Trajectory"),
    "list_names": ("dgt_interp.names", "list_names"),
    "describe_names": ("dgt_interp.names", "describe_names"),
}

# Opaque serial depth (dgt_interp.depth).
_LAZY["serial_depth"] = ("dgt_interp.depth", "serial_depth")
_LAZY["interpretable"] = ("dgt_interp.depth", "interpretable")

# Lenses (dgt_interp.lens).
_LAZY.update(LogitLens=("dgt_interp.lens", "LogitLens"), TunedLens=("dgt_interp.lens", "TunedLens"))

# Patching across steps (dgt_interp.patching, dgt_interp.attribution).
_LAZY.update(Patching=("dgt_interp.patching", "Patching"), Site=("dgt_interp.patching", "Site"),
             attribution_patch=("dgt_interp.attribution", "attribution_patch"))

# Case studies (dgt_interp.casestudy).
_LAZY.update(CaseStudy=("dgt_interp.casestudy", "CaseStudy"), register_case_study=("dgt_interp.casestudy", "register"))


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dgt_interp' has no attribute {name!r}")

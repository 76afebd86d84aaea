"""dgt_interp: mechanistic interpretability for diffusion language models (DiffusionGemma first)."""

__version__ = "0.1.0"

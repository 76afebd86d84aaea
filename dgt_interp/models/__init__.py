"""Models: tiny configs built from size arguments, loading of model dirs and hub ids."""

from .build import (
    TinySize,
    ar_config,
    ar_generation_config,
    build_ar,
    build_diffusion,
    diffusion_config,
    diffusion_generation_config,
    size_of,
    text_parameter_count,
)
from .load import MODEL_CLASSES, ModelLoadError, diffusion_device_map, is_diffusion, load_model, load_tokenizer, resolve

__all__ = [
    "TinySize", "ar_config", "ar_generation_config", "build_ar", "build_diffusion", "diffusion_config",
    "diffusion_generation_config", "size_of", "text_parameter_count",
    "MODEL_CLASSES", "ModelLoadError", "diffusion_device_map", "is_diffusion", "load_model", "load_tokenizer", "resolve",
]

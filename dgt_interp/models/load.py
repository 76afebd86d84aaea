"""Load a model dir or hub checkpoint as the right `transformers` class, with one-line errors.

safetensors only (never pickle); `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, PreTrainedModel

from dgt_interp.errors import DgtInterpError
from dgt_interp.tokenizer import attach_tokenizer, load_tokenizer
from dgt_interp.zoo import resolve

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "diffusion_gemma": DiffusionGemmaForBlockDiffusion,
    "gemma4_text": Gemma4ForCausalLM,
}


class ModelLoadError(DgtInterpError, ValueError):
    """Raised with a one-line message that says what to do."""


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") != 1


def load_model(
    name_or_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> PreTrainedModel:
    """Load a DiffusionGemma or Gemma 4 (text) model from a zoo name, a local dir or a hub id, in eval mode.

    >>> model = load_model("addition-diffusion")          # shipped zoo model
    >>> model = load_model("/path/to/save_pretrained/dir")
    """
    name = resolve(name_or_dir)
    path = Path(name).expanduser()
    if _looks_like_path(name):
        if not path.is_dir():
            raise ModelLoadError(
                f"model dir {name!r} does not exist; pass a save_pretrained dir or a zoo name "
                "(see `dgt-interp zoo list`)"
            )
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelLoadError(f"{name!r} has no config.json; it is not a save_pretrained model dir")
        try:
            model_type = json.loads(cfg_file.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"model dir {name!r} is corrupt (config.json: {e}); re-save or re-train it") from None
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"model dir {name!r} has no .safetensors weights (pickle checkpoints are not loaded); "
                "convert it with save_pretrained(..., safe_serialization=True)"
            )
        source = str(path)
    else:
        source = name
        try:
            model_type = AutoConfig.from_pretrained(
                source, trust_remote_code=trust_remote_code, local_files_only=local_files_only
            ).model_type
        except OSError as e:
            raise ModelLoadError(
                f"cannot fetch {name!r} from the hub ({type(e).__name__}); download it where the hub is "
                "reachable (`hf download {name}`) and pass the local dir".replace("{name}", name)
            ) from None
    cls = MODEL_CLASSES.get(model_type)
    if cls is None:
        raise ModelLoadError(
            f"{name!r} is a {model_type!r} model; dgt_interp loads {', '.join(sorted(MODEL_CLASSES))}"
        )
    try:
        model = cls.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
        )
    except OSError as e:
        raise ModelLoadError(f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # safetensors header errors, shape mismatches
        raise ModelLoadError(
            f"model dir {name!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "re-save or re-train it"
        ) from None
    model = model.to(device).eval()
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        attach_tokenizer(model, load_tokenizer(path))
    return model


def is_diffusion(model) -> bool:
    return isinstance(model, DiffusionGemmaForBlockDiffusion)

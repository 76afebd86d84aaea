"""Load a model dir or hub checkpoint as the right `transformers` class, with one-line errors.

safetensors only (never pickle); `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

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
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype={dtype!r}: weights load in a floating dtype; pass torch.float32, "
                             "torch.bfloat16 or torch.float16")
    device = check_device(device)
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
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a model is not progress to report (and keeps stderr for errors)
    try:
        model, info = cls.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            output_loading_info=True,
        )
    except OSError as e:
        raise ModelLoadError(f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # safetensors header errors, shape mismatches
        raise ModelLoadError(
            f"model dir {name!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "re-save or re-train it"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    problems = [(kind, sorted(info.get(key) or [])) for kind, key in
                (("missing", "missing_keys"), ("of the wrong shape", "mismatched_keys"), ("unexpected", "unexpected_keys"),
                 ("unreadable", "error_msgs"))]
    problems = [(kind, keys) for kind, keys in problems if keys]
    if problems:  # HF would random-initialise what is missing and only log it: the answers would be wrong
        kind, keys = problems[0]
        first = keys[0] if isinstance(keys[0], str) else keys[0][0]
        raise ModelLoadError(f"model dir {name!r} has {len(keys)} weight tensor(s) {kind} (e.g. {first!r}); it is "
                             "incomplete or from another architecture: re-save or re-train it")
    model = model.to(device).eval()
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        attach_tokenizer(model, load_tokenizer(path))
    return model


def check_device(device) -> torch.device:
    """A device torch can place the model on, or a one-line error naming the ones this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    ok = dev is not None and (dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available() and
                                                     (dev.index or 0) < torch.cuda.device_count()) or dev.type == "meta")
    if not ok:
        raise ModelLoadError(f"device {device!r} is not available here; this machine has {', '.join(have)}")
    return dev


def is_diffusion(model) -> bool:
    return isinstance(model, DiffusionGemmaForBlockDiffusion)

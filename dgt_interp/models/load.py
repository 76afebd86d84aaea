"""Load a model dir or hub checkpoint as the right `transformers` class, with one-line errors.

safetensors only (never pickle); `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from dgt_interp.backends.devices import check_device
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
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
    max_memory: dict | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> PreTrainedModel:
    """Load a DiffusionGemma or Gemma 4 (text) model from a zoo name, a local dir or a hub id, in eval mode.

    `device` puts the whole model on one device (default cpu). `device_map` instead lets accelerate
    place it (passed to `from_pretrained` with `offload_folder` and `max_memory`): "auto" /
    "balanced" / "sequential", or `{module name: device | "cpu" | "disk"}`; modules mapped to "disk"
    (or pushed off by `max_memory`) are offloaded to `offload_folder` and loaded for each forward.
    `diffusion_device_map` writes such a dict for DiffusionGemma, whose encoder and decoder share
    every layer's weights (layer i of both must go to the same place).

    >>> model = load_model("addition-diffusion")          # shipped zoo model
    >>> model = load_model("/path/to/save_pretrained/dir")
    >>> model = load_model(d, device_map=diffusion_device_map(d, {0: "disk", 1: "cpu"}), offload_folder="off/")
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype={dtype!r}: weights load in a floating dtype; pass torch.float32, "
                             "torch.bfloat16 or torch.float16")
    dispatch = _dispatch_kwargs(device, device_map, offload_folder, max_memory)
    device = _check_device(device if device is not None else "cpu")
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
    if dispatch.get("max_memory") is not None and model_type == "diffusion_gemma" and isinstance(device_map, str):
        # HF's "auto" placement cannot split DiffusionGemma's shared encoder/decoder layers (5.24): place them here
        dispatch["device_map"] = diffusion_device_map(AutoConfig.from_pretrained(source, local_files_only=local_files_only),
                                                      max_memory=dispatch.pop("max_memory"), dtype=dtype)
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
            **dispatch,
        )
    except OSError as e:
        raise ModelLoadError(f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # safetensors header errors, shape mismatches; accelerate placement errors
        if dispatch:  # HF's "auto" placement cannot split DiffusionGemma's shared encoder/decoder layers (5.24)
            raise ModelLoadError(
                f"cannot dispatch {name!r} with device_map={device_map!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); tied weights must share a device: for DiffusionGemma "
                "pass device_map=dgt_interp.models.diffusion_device_map(...)") from None
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
    model = (model if dispatch else model.to(device)).eval()  # a dispatched model stays where accelerate put it
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        attach_tokenizer(model, load_tokenizer(path))
    return model


def _check_device(device) -> torch.device:
    """A device torch can place the model on, or a one-line error naming the ones this machine has."""
    return check_device(device, ModelLoadError, "device")


def _dispatch_kwargs(device, device_map, offload_folder, max_memory) -> dict:
    """The accelerate kwargs of `from_pretrained`, after one-line checks ({} without a device_map)."""
    if device_map is None:
        if offload_folder is not None or max_memory is not None:
            raise ModelLoadError("offload_folder= and max_memory= need device_map= (e.g. device_map='auto')")
        return {}
    if device is not None:
        raise ModelLoadError(f"pass device={device!r} or device_map=, not both (device_map places every module)")
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        targets = []
    elif isinstance(device_map, dict) and device_map and all(isinstance(k, str) for k in device_map):
        targets = list(device_map.values())
    elif isinstance(device_map, (str, int, torch.device)):
        targets = [device_map]
    else:
        raise ModelLoadError(f"device_map={device_map!r}: pass 'auto', 'balanced', 'sequential', a device, or "
                             "{module name: device | 'disk'}")
    for t in targets:
        if t != "disk":
            check_device(t if not isinstance(t, int) else f"cuda:{t}", ModelLoadError, "device_map device")
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise ModelLoadError(f"max_memory={max_memory!r}: pass {{device: size}}, e.g. {{'cpu': '2GiB'}}")
        for k in max_memory:
            if k != "disk":
                check_device(k if not isinstance(k, int) else f"cuda:{k}", ModelLoadError, "max_memory device")
    offloads = "disk" in targets or max_memory is not None
    if offloads and offload_folder is None:
        raise ModelLoadError("this device_map/max_memory can offload to disk: pass offload_folder=<directory> for the "
                             "offloaded weights")
    if offload_folder is not None and Path(offload_folder).exists() and not Path(offload_folder).is_dir():
        raise ModelLoadError(f"offload_folder {str(offload_folder)!r} exists and is not a directory")
    out = {"device_map": device_map}
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    if max_memory is not None:
        out["max_memory"] = max_memory
    return out


def diffusion_device_map(config_or_dir, layers: dict[int, str | int] | None = None, *, rest: str | int = "cpu",
                         max_memory: dict | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """A `device_map` for DiffusionGemma placing decoder layer i (and the encoder layer that shares its
    weights) on `layers[i]` (a device or "disk"), every other module on `rest`.

    With `max_memory` ({device: bytes or "2GiB"}, in order) instead of `layers`: `rest` goes on the
    first device, then layers fill the devices in order (at `dtype`) and what does not fit goes to
    "disk" (HF's own `device_map="auto"` cannot split these shared layers; `load_model` uses this).

    `rest` (embeddings, final norm, self-conditioning, lm_head) must be where the model computes (the
    GPU when layers are on one): DiffusionGemma reads its tied embedding outside the embedding
    module (the self-conditioning soft embedding, lm_head), which accelerate does not load for an
    offloaded module, and HF's own `generate` then samples from NaNs (transformers 5.24).
    `config_or_dir`: a model, its config, or a model dir / zoo name.
    >>> diffusion_device_map("addition-diffusion", {0: "disk", 2: "disk"})   # layers 1 and 3 on cpu
    """
    config = getattr(config_or_dir, "config", config_or_dir)
    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(resolve(str(config)))
    if max_memory is not None:
        if layers is not None:
            raise ModelLoadError("pass layers= or max_memory=, not both")
        layers, rest = _fill_layers(config, max_memory, dtype)
    layers = dict(layers or {})
    accel = [d for d in layers.values() if d not in ("cpu", "disk")]
    if rest == "disk" or (rest == "cpu" and accel):
        raise ModelLoadError(f"rest={rest!r} would offload the embeddings/lm_head, which DiffusionGemma reads outside "
                             f"their modules (generate then fails); put them on a compute device: rest={accel[0] if accel else 'cpu'!r}")
    if getattr(config, "model_type", None) != "diffusion_gemma":
        raise ModelLoadError("diffusion_device_map is for DiffusionGemma configs; use device_map='auto' for Gemma 4")
    n = config.get_text_config().num_hidden_layers
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ModelLoadError(f"layer {bad[0]!r} is out of range: the model has {n} layers (0..{n - 1})")
    out = {m: rest for m in ("model.encoder.vision_tower", "model.encoder.embed_vision",
                             "model.encoder.language_model.embed_tokens", "model.encoder.language_model.rotary_emb",
                             "model.encoder.language_model.norm", "model.decoder.embed_tokens", "model.decoder.rotary_emb",
                             "model.decoder.norm", "model.decoder.self_conditioning", "lm_head")}
    for i in range(n):
        out[f"model.encoder.language_model.layers.{i}"] = out[f"model.decoder.layers.{i}"] = layers.get(i, rest)
    return out


def _fill_layers(config, max_memory: dict, dtype: torch.dtype) -> tuple[dict[int, str | int], str | int]:
    """(layer -> device | "disk", rest device): everything but the layers on the first device of
    `max_memory`, then layers in order on the devices while they fit, the remainder on disk."""
    from accelerate.utils import convert_file_size_to_int

    if getattr(config, "model_type", None) != "diffusion_gemma":
        raise ModelLoadError("diffusion_device_map is for DiffusionGemma configs; use device_map='auto' for Gemma 4")
    devices = [(d, convert_file_size_to_int(v)) for d, v in max_memory.items() if d != "disk"]
    if not devices:
        raise ModelLoadError("max_memory names no compute device; give e.g. {'cpu': '2GiB'} (the rest goes to disk)")
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    size = torch.empty((), dtype=dtype).element_size()
    decoder = model.model.decoder.layers
    per_layer = [sum(p.numel() for p in layer.parameters()) * size for layer in decoder]
    seen = {id(p) for layer in decoder for p in layer.parameters()}  # the encoder's layers are the same tensors
    rest_bytes = sum(p.numel() * size for p in model.parameters() if id(p) not in seen)
    (first, room), *others = devices
    if rest_bytes > room:
        raise ModelLoadError(f"the embeddings, norms and lm_head ({rest_bytes / 2**20:.1f} MiB) do not fit max_memory[{first!r}]; "
                             "they cannot be offloaded (DiffusionGemma reads the tied embedding outside its module)")
    queue, room, layers = [(first, room - rest_bytes)] + others, None, {}
    device, room = queue.pop(0)
    for i, need in enumerate(per_layer):
        while need > room and queue:
            device, room = queue.pop(0)
        if need > room:
            layers[i] = "disk"
        else:
            layers[i], room = device, room - need
    return layers, first


def is_diffusion(model) -> bool:
    return isinstance(model, DiffusionGemmaForBlockDiffusion)

"""Where a model computes: plain models, and models dispatched or offloaded by accelerate.

A model loaded with `device_map=` (`from_pretrained`, `accelerate.dispatch_model`) or wrapped by
`accelerate.cpu_offload` carries an accelerate hook (`module._hf_hook`, an `AlignDevicesHook`) on
some modules: it moves inputs to the module's *execution device* and, for offloaded modules, loads
the weights from its `weights_map` (CPU RAM or a memory-mapped file on disk) for the forward and
puts them back on the `meta` device after it. So a parameter's `.device` can be `meta` while the
module computes on `cpu` or `cuda:0`. These helpers answer "where" and "which values" without
moving anything:

- `execution_device(model_or_module)`: where a forward of it runs (inputs go there);
- `resolved_tensors(model, prefix)`: a module's parameters with their real values (offloaded ones
  read from the hook's weights map), for `torch.func.functional_call`;
- `first_values(model, name, tensor, k)`: the first `k` values (flattened) of a state-dict entry,
  read from disk by slicing when it is offloaded (what `trajectory.model_fingerprint` hashes);
- `shared_hooks(model)`: the hooks a structural twin must share, not copy (a deep copy would copy
  every CPU-offloaded weight in their weights maps).
"""

from __future__ import annotations

import math

import torch

from dgt_interp.errors import DgtInterpError

META = torch.device("meta")


class DeviceError(DgtInterpError, ValueError):
    """A device that does not exist on this machine (one-line message naming the ones it has)."""


def check_device(device, error: type[Exception] = DeviceError, what: str = "device") -> torch.device:
    """`device` as a `torch.device` this machine has (cpu, cuda:i, meta), else a one-line `error`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ok = dev is not None and (dev.type in ("cpu", "meta") or (dev.type == "cuda" and (dev.index or 0) < n_cuda))
    if not ok:
        have = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(n_cuda)])
        raise error(f"{what} {device!r} is not available here; this machine has {have}")
    return dev


def _hooks(module) -> list:
    """The accelerate hooks on `module` (a `SequentialHook` unpacked), [] when none."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def is_dispatched(model) -> bool:
    """True when accelerate hooks place or offload some of `model`'s modules."""
    return any(_hooks(m) for m in model.modules())


def execution_device(module) -> torch.device:
    """The device a forward of `module` runs on: its accelerate hook's execution device, else the first
    parameter (or buffer) not on `meta`, else the first hooked submodule's; cpu for an empty module."""
    for m in module.modules():
        for hook in _hooks(m):
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if t.device != META:
                return t.device
    return torch.device("cpu")


def _offload_source(model, name: str):
    """(weights map, key) holding the offloaded value of state-dict entry `name`, or None."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):  # the owning module first, then its ancestors
        path = ".".join(parts[:cut])
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        for hook in _hooks(module):
            wmap = getattr(hook, "weights_map", None)
            if getattr(hook, "offload", False) and wmap is not None:
                rel = ".".join(parts[cut:])
                return wmap, rel
    return None


def _value(model, name: str, t: torch.Tensor) -> torch.Tensor:
    if t.device != META:
        return t
    src = _offload_source(model, name)
    if src is None:
        raise RuntimeError(f"{name} is on the meta device and no accelerate hook holds its value")
    wmap, key = src
    return wmap[key]


def resolved_tensors(model, prefix: str) -> dict[str, torch.Tensor]:
    """`{name: detached tensor}` of the module at `prefix` (names relative to it), offloaded values read
    from their weights map and moved to the module's execution device."""
    module = model.get_submodule(prefix)
    device = execution_device(module)
    full = (prefix + ".") if prefix else ""
    return {n: _value(model, full + n, p).detach().to(device) for n, p in module.named_parameters()}


def _safetensors_head(wmap, key: str, shape: tuple[int, ...], k: int) -> torch.Tensor | None:
    """The first `k` flattened values of an entry an `OffloadedWeightsLoader` reads from a safetensors
    file, by slicing (a whole expert tensor is not read to hash 64 numbers); None if not that case."""
    while hasattr(wmap, "dataset"):  # PrefixedDataset
        key, wmap = wmap.prefix + key, wmap.dataset
    info = getattr(wmap, "index", {}).get(key) if key not in getattr(wmap, "state_dict", {}) else None
    if not info or info.get("safetensors_file") is None:
        return None
    from safetensors import safe_open

    lead = 0  # index 0 on the leading dims while the rest still holds k values
    while lead < len(shape) - 1 and math.prod(shape[lead + 1:]) >= k:
        lead += 1
    with safe_open(info["safetensors_file"], framework="pt", device="cpu") as f:
        part = f.get_slice(info.get("weight_name", key))[tuple(slice(0, 1) for _ in range(lead))]
    if "dtype" in info:
        part = part.to(getattr(torch, info["dtype"]))
    return part.reshape(-1)[:k]


def first_values(model, name: str, t: torch.Tensor, k: int = 64) -> torch.Tensor | None:
    """The first `k` values of `t.reshape(-1)` for state-dict entry `name`, on CPU; for an offloaded
    (meta) tensor read from its weights map; None when the values exist nowhere (a bare meta model)."""
    if t.device != META:
        return t.detach().reshape(-1)[:k].cpu()
    src = _offload_source(model, name)
    if src is None:
        return None
    wmap, key = src
    head = _safetensors_head(wmap, key, tuple(t.shape), k)
    if head is None:
        head = wmap[key].reshape(-1)[:k]
    return head.detach().cpu()


def shared_hooks(model) -> dict[int, object]:
    """`{id(hook): hook}` of every accelerate hook (and its weights map): a deep-copy memo entry that
    makes a structural twin run through the very same hooks (so offloaded weights are not copied)."""
    memo = {}
    for m in model.modules():
        top = getattr(m, "_hf_hook", None)
        if top is None:
            continue
        memo[id(top)] = top
        for hook in _hooks(m):
            memo[id(hook)] = hook
            wmap = getattr(hook, "weights_map", None)
            if wmap is not None:
                memo[id(wmap)] = wmap
    return memo


__all__ = ["DeviceError", "check_device", "is_dispatched", "execution_device", "resolved_tensors", "first_values", "shared_hooks"]

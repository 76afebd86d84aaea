"""TransformerLens bridge for DiffusionGemma (and the Gemma 4 AR twin), on a private twin of the model.

`DiffusionGemmaArchitectureAdapter` re-points TL's Gemma 4 adapter at `model.decoder.*` (the
bidirectional denoiser), drops the vision components and adds a `self_cond` component for the
self-conditioning channel. It is registered with TL's own mechanism
(`ArchitectureAdapterFactory.register_adapter("DiffusionGemmaForBlockDiffusion", ...)`), so
`build_bridge_from_module(model, "DiffusionGemmaForBlockDiffusion", hf_config=model.config)` works
for anyone who imports this module.

Self-conditioning hook points (all editable; shapes for one decoder pass):
  `self_cond.hook_logits_in`  [batch, pos, vocab]  processed logits of the previous step, before the
                              decoder's softmax (does not fire at a canvas's first step: no logits)
  `self_cond.hook_soft_embed` [batch, pos, d]      softmax(logits) @ E * sqrt(d) (zeros at first step)
  `self_cond.hook_signal`     [batch, pos, d]      the gated-MLP signal added to the token embeddings
  `self_cond.hook_in`         [batch, pos, d]      the canvas token embeddings (= `hook_embed`)
  `self_cond.hook_out`        [batch, pos, d]      post-norm(embeddings + signal) = `blocks.0.hook_resid_pre`
Prompt path (every level): `blocks.{l}.hook_cache_k` / `hook_cache_v` [batch, cached_pos, kv_head, d_head],
the encoder's cached keys/values (prompt + earlier canvases) decoder layer l attends to at a pass.

Bridging replaces submodules in place, so we never bridge the user's model: `bridge_for(model)`
bridges a structural twin that shares every parameter and buffer tensor with it (no weight copy)
and caches it. The user's `model` stays a plain `transformers` model; edits to its weights are seen
by the twin. The twin keeps the model's attention implementation (TL's default switch to eager is
slower), except at level "attention": eager attention, so that `attn.hook_pattern` and
`hook_attn_scores` fire (with HF 5.24's eager decoder mask fixed for padded batches, `_float_mask_dummy`).

Three granularities of the same adapter, the cheapest that has every name a capture needs is used
(TL's per-component overhead is large next to a tiny model's forward):
  "blocks": block in/out only (`blocks.{l}.hook_resid_pre/post`): one bridge component per layer
  "resid":  + embeddings, self-conditioning, final norm, unembed
  "full":   every component of TL's Gemma 4 adapter (attention, MLP, router/experts, norms).
  "attention": "full" under eager attention (attention patterns; DiffusionGemma).
TL versions are pinned (pyproject): `_reprefix_components` and `sources._bridge_builder` are private.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components import LinearBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformer_lens.model_bridge.supported_architectures.gemma4 import Gemma4ArchitectureAdapter
from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, PretrainedConfig

from dgt_interp.backends.devices import shared_hooks
from dgt_interp.errors import DgtInterpError

DIFFUSION_ARCH = "DiffusionGemmaForBlockDiffusion"
AR_ARCH = "Gemma4ForCausalLM"
LEVELS = ("blocks", "resid", "full", "attention")
# Components kept per level (top-level keys of the component mapping); "full" and "attention" keep all.
_LEVEL_COMPONENTS = {
    "blocks": ("blocks",),
    "resid": ("embed", "rotary_emb", "self_cond", "blocks", "ln_final", "unembed"),
}


class SelfConditioningBridge(GeneralizedComponent):
    """`DiffusionGemmaSelfConditioning`: hook_in = token embeddings, hook_out = block-0 input.

    `hook_logits_in` is fired by a pre-hook on the decoder (the logits enter the decoder forward,
    not this module); the aliases name the soft embedding and the added signal.
    """

    hook_aliases = {
        "hook_soft_embed": "pre_norm.hook_in",
        "hook_signal": "down_proj.hook_out",
    }

    def __init__(self, name: str, **kwargs):
        super().__init__(
            name,
            submodules={
                "pre_norm": GeneralizedComponent(name="pre_norm"),
                "down_proj": LinearBridge(name="down_proj"),
            },
            **kwargs,
        )
        self.hook_logits_in = HookPoint()


class DiffusionGemmaArchitectureAdapter(Gemma4ArchitectureAdapter):
    """TL's Gemma 4 adapter re-pointed at DiffusionGemma's decoder, plus the self-conditioning channel."""

    native_sampler = "generate"  # lets `bridge.diffusion_generate(...)` call HF's generate
    supports_causal_loss = False  # the decoder is bidirectional over the canvas

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = False
        self.component_mapping.pop("vision_encoder", None)
        self.component_mapping.pop("vision_projector", None)
        self._reprefix_components("model.language_model.", "model.decoder.")
        self.component_mapping["self_cond"] = SelfConditioningBridge(name="model.decoder.self_conditioning")


ArchitectureAdapterFactory.register_adapter(DIFFUSION_ARCH, DiffusionGemmaArchitectureAdapter)


def _keep_attention_and_level(level: str):
    """post_adapter_hook: keep the model's attention implementation (except at "attention"); prune to `level`."""

    def hook(adapter) -> None:
        if level != "attention":
            adapter.cfg.attn_implementation = None  # TL would force eager (see module docstring)
        if level in _LEVEL_COMPONENTS:
            mapping = adapter.component_mapping
            for key in list(mapping):
                if key not in _LEVEL_COMPONENTS[level]:
                    mapping.pop(key)
            block = mapping["blocks"]
            block.submodules = {}
            # the block's aliases into pruned submodules (hook_resid_mid -> ln2.hook_in, ...) cannot
            # resolve here; keep only those into the block's own hooks (hook_resid_pre/post)
            block.hook_aliases = {alias: target for alias, target in block.hook_aliases.items()
                                  if target in ("hook_in", "hook_out")}

    return hook


class UnsupportedModelError(DgtInterpError, TypeError):
    """A model dgt_interp does not instrument (one-line message naming the supported classes)."""


def architecture_of(model) -> str:
    """The TL architecture name of a supported model; a one-line `UnsupportedModelError` otherwise."""
    if isinstance(model, DiffusionGemmaForBlockDiffusion):
        return DIFFUSION_ARCH
    if isinstance(model, Gemma4ForCausalLM):
        return AR_ARCH
    raise UnsupportedModelError(
        f"dgt_interp captures DiffusionGemmaForBlockDiffusion or Gemma4ForCausalLM, got {type(model).__name__}; "
        "load one with dgt_interp.models.load_model"
    )


def _tensors(model) -> list[torch.Tensor]:
    return list(model.parameters()) + list(model.buffers())


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def structural_twin(model):
    """A deep copy of `model`'s module tree that shares every parameter and buffer tensor with it.

    Hooks the user registered on `model`'s modules are not carried over (a deep copy would copy
    them): the twin runs only the hooks `capture` puts on it. accelerate's hooks (a model loaded with
    `device_map=`, or offloaded) are shared, not copied: the twin places and offloads exactly as the
    model does, and offloaded weights are not copied."""
    memo = {id(t): t for t in _tensors(model)}
    memo.update(shared_hooks(model))
    twin = copy.deepcopy(model, memo)
    for module in twin.modules():
        for attr in _HOOK_DICTS:
            getattr(module, attr, {}).clear()
    return twin.eval()


@dataclass
class Bridged:
    """A bridged twin of a user model: `twin` (HF model, bridged in place) and its TL `bridge`."""

    twin: torch.nn.Module
    bridge: object
    level: str
    fingerprint: tuple
    arch: str
    hook_points: dict = field(default_factory=dict)  # TL's `bridge.hook_dict` (aliases included), built once
    extras: dict = field(default_factory=dict)  # built once per twin by a backend (e.g. its nnsight wrapper)


_BRIDGES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, str], Bridged]]" = weakref.WeakKeyDictionary()


_PLAIN = (int, float, str, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


def config_state(value):
    """A comparable snapshot of a config: every attribute of it and its sub-configs, lists and dicts
    as nested tuples (other values by `repr`). Equal snapshots mean equal `to_json_string()`s, at a
    fraction of the cost (no defaults diff, no JSON)."""
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, PretrainedConfig):
        return (type(value).__name__,) + tuple((k, config_state(v)) for k, v in vars(value).items())
    if isinstance(value, dict):
        return tuple((k, config_state(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return (type(value).__name__,) + tuple(config_state(v) for v in value)
    return repr(value)


def _scan(model) -> tuple:
    """What the twin must agree with: the tensors (by identity), every module's plain settings
    (e.g. `final_logit_softcapping`, `training`) and the config (`config_state`); one pass over the
    module tree (~1 ms on a zoo model)."""
    out = []
    for m in model.modules():
        d = m.__dict__
        out.append(tuple(map(id, d["_parameters"].values())))
        out.append(tuple(map(id, d["_buffers"].values())))
        out.append(tuple([(k, v) for k, v in d.items() if type(v) in _PLAIN_TYPES and k[0] != "_"]))
    return tuple(out), config_state(model.config)


_PINS = threading.local()  # id(model) -> [model, fingerprint, depth] inside `pinned(model)`, per thread


@contextmanager
def pinned(model):
    """Within this block `model` is taken as unchanged: its fingerprint is computed once, not at every
    `bridge_for` / name lookup (one capture makes dozens). Re-entrant; per thread."""
    pins = _PINS.__dict__.setdefault("pins", {})
    entry = pins.get(id(model))
    if entry is not None and entry[0] is model:
        entry[2] += 1
    else:
        entry = pins[id(model)] = [model, _scan(model), 1]
    try:
        yield
    finally:
        entry[2] -= 1
        if entry[2] == 0:
            pins.pop(id(model), None)


def fingerprint(model) -> tuple:
    """What a twin of `model` must agree with (`_scan`): the one computed when the enclosing
    `pinned(model)` began, else computed now. Equal fingerprints: same tensors, settings, config."""
    entry = _PINS.__dict__.get("pins", {}).get(id(model))
    return entry[1] if entry is not None and entry[0] is model else _scan(model)


def _install_logits_in_hook(twin, bridge) -> None:
    """Fire `self_cond.hook_logits_in` on the logits entering the decoder (editable: the hook's
    return value replaces them before the decoder's softmax)."""
    point = bridge.self_cond.hook_logits_in

    def pre_hook(module, args, kwargs):
        logits = kwargs.get("self_conditioning_logits")
        if logits is None:
            return None
        kwargs["self_conditioning_logits"] = point(logits)
        return args, kwargs

    twin.model.decoder.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _float_mask_dummy(twin) -> None:
    """Let eager attention run padded batches: HF 5.24's `generate` builds the decoder mask from an
    integer dummy tensor, and the eager mask takes its dtype from it (`torch.finfo` of an integer
    dtype raises). Hand the mask builder a float dummy of the same shape instead (the twin only)."""
    decoder = twin.model.decoder
    build = decoder.create_diffusion_decoder_attention_mask

    def create_diffusion_decoder_attention_mask(config, inputs_embeds, cache, decoder_attention_mask=None):
        if not inputs_embeds.is_floating_point():
            inputs_embeds = torch.empty(inputs_embeds.shape, dtype=twin.dtype, device=inputs_embeds.device)
        return build(config=config, inputs_embeds=inputs_embeds, cache=cache,
                     decoder_attention_mask=decoder_attention_mask)

    decoder.create_diffusion_decoder_attention_mask = create_diffusion_decoder_attention_mask


def _idle(point: HookPoint) -> bool:
    """No TL hook on `point` and no nnsight controller in its forward: calling it would change nothing."""
    return not point._forward_hooks and not point._forward_pre_hooks and "forward" not in point.__dict__


_LEAN_BLOCKS: dict[type, type] = {}


def _lean_block_class(base: type) -> type:
    """`base` (TL's `BlockBridge` class) with `forward` cut to what it does for a block with no
    bridged submodules (level "blocks") outside TL's start/stop-at-layer runs: `hook_in` on the
    hidden states, the wrapped layer, `hook_out` on its output, each through TL's own method. The
    steps skipped (attention-capture wiring and clearing, start/stop-at-layer checks, accelerate's
    device alignment of a layer that is not offloaded) do nothing in that case; anything else takes
    TL's full `forward` / `__call__`."""
    if base not in _LEAN_BLOCKS:

        class LeanBlock(base):
            def __call__(self, *args, **kwargs):
                # TL's __call__ wraps every call in accelerate's `align_module_device`, which does
                # something only for a layer accelerate offloads (one with an `_hf_hook`)
                original = self._modules.get("_original_component")
                if original is not None and "_hf_hook" in original.__dict__:
                    return super().__call__(*args, **kwargs)
                return torch.nn.Module.__call__(self, *args, **kwargs)

            def forward(self, *args, **kwargs):
                if self.submodules or self._stop_at_layer_idx is not None or self._start_at_layer_idx is not None \
                        or self.original_component is None:
                    return super().forward(*args, **kwargs)
                args, kwargs = self._hook_input_hidden_states(args, kwargs)
                kwargs = self._filter_kwargs_for_forward(kwargs, len(args))
                output = self.original_component(*args, **kwargs)
                return self._apply_output_hook(
                    output, force_tuple_for_bare_tensor=self._is_standalone_hidden_state_call(args, kwargs))

        LeanBlock.__name__ = LeanBlock.__qualname__ = f"Lean{base.__name__}"
        _LEAN_BLOCKS[base] = LeanBlock
    return _LEAN_BLOCKS[base]


def _lighten_blocks(bridge) -> None:
    """Take per-call costs out of TL's `BlockBridge.forward` without changing what it does.

    - TL decides which kwargs the wrapped layer accepts from `inspect.signature` at every block call
      (tens of microseconds, a few % of a zoo model's denoising step); the decision depends only on
      the kwarg names and the positional count, so TL's own answer is computed once and reused.
    - The start/stop-at-layer attributes TL reads at every call exist only once a TL run with
      `start_at_layer` / `stop_at_layer` set them (and reset them to None); until then each read
      misses and walks TL's `__getattr__` fallback. They start as None here, TL's own idle value.
    - A block with no bridged submodules (level "blocks") runs `_lean_block_class`'s forward.
    """
    for block in bridge.blocks:
        if not block.submodules:
            block.__class__ = _lean_block_class(type(block))
        for attr in ("_stop_at_layer_idx", "_start_at_layer_idx", "_start_residual"):
            if attr not in block.__dict__:
                setattr(block, attr, None)
        original = block._filter_kwargs_for_forward
        kept: dict = {}

        def filtered(kwargs, num_positional_args=0, original=original, kept=kept):
            key = (tuple(kwargs), num_positional_args)
            if key not in kept:
                out = original(kwargs, num_positional_args)
                kept[key] = None if out is kwargs else tuple(out)  # None: TL passes them all through
                return out
            names = kept[key]
            return kwargs if names is None else {k: kwargs[k] for k in names}

        block._filter_kwargs_for_forward = filtered


def _install_cache_hooks(twin, bridge) -> None:
    """Fire `blocks.{l}.hook_cache_k` / `hook_cache_v` on the encoder KV cache decoder layer l reads.

    The decoder sees the prompt (and earlier canvases) only through the keys and values the causal
    encoder cached; each decoder pass reads layer l's entry in `append_to_cache`. The hook sees it
    as `[batch, cached_pos, kv_head, d_head]` (TL's `hook_k` layout); its return value is what the
    decoder attends to at that pass, while the cache itself stays unchanged for later passes.
    """
    for block in bridge.blocks:
        block.hook_cache_k, block.hook_cache_v = HookPoint().train(block.training), HookPoint().train(block.training)
        layer_attn = block.original_component.self_attn
        attn = getattr(layer_attn, "original_component", layer_attn)  # "full" level wraps it
        append = attn.append_to_cache

        def hooked(cache, key_states, value_states, append=append, idx=attn.layer_idx, k=block.hook_cache_k,
                   v=block.hook_cache_v):
            if _idle(k) and _idle(v):  # nothing reads or edits the cache at this pass: skip the transposes
                return append(cache, key_states, value_states)
            entry = cache.layers[idx]
            keys, values = entry.keys, entry.values
            entry.keys = k(keys.transpose(1, 2)).transpose(1, 2)
            entry.values = v(values.transpose(1, 2)).transpose(1, 2)
            try:
                return append(cache, key_states, value_states)
            finally:
                entry.keys, entry.values = keys, values

        attn.append_to_cache = hooked
    bridge._scan_existing_hooks(bridge, "")  # register the new names (TL re-scans the same way)


def bridge_for(model, level: str = "full", backend: str = "tl") -> Bridged:
    """The cached bridged twin of `model` at `level` ("blocks", "resid" or "full"); built on first use.

    Rebuilt when the model changed in a way a twin would not see: its tensors were replaced (e.g.
    after `.to(device)`), a module's plain setting or the config changed (`fingerprint`).
    `backend="nnsight"` gets a twin of its own: nnsight installs a permanent wrapper as the forward
    of every module it wraps (inert outside a trace, but a few Python calls per module call), which
    would slow every later TL capture on a shared twin.
    """
    if level not in LEVELS:
        raise UnsupportedModelError(f"unknown bridge level {level!r}; use one of {LEVELS}")
    arch = architecture_of(model)
    per_model = _BRIDGES.setdefault(model, {})
    fp = fingerprint(model)
    cached = per_model.get((level, backend))
    if cached is not None and cached.fingerprint is fp:
        return cached
    if cached is not None and cached.fingerprint == fp:
        cached.fingerprint = fp  # the same state: the next lookup under this `pinned` is one `is`
        return cached
    twin = structural_twin(model)
    with warnings.catch_warnings():  # "alias did not resolve" for components pruned at level "resid"
        warnings.simplefilter("ignore")
        bridge = build_bridge_from_module(
            twin,
            arch,
            hf_config=twin.config,
            model_name=f"dgt_interp:{type(model).__name__}",
            post_adapter_hook=_keep_attention_and_level(level),
        )
    _lighten_blocks(bridge)
    if arch == DIFFUSION_ARCH:
        if hasattr(bridge, "self_cond"):
            _install_logits_in_hook(twin, bridge)
        _install_cache_hooks(twin, bridge)
        if level == "attention":
            _float_mask_dummy(twin)
    bridged = Bridged(twin, bridge, level, fp, arch, hook_points=bridge.hook_dict)
    per_model[(level, backend)] = bridged
    return bridged


@contextmanager
def hooks(bridged: Bridged, fwd_hooks):
    """TL's `bridge.hooks(fwd_hooks=...)` for concrete hook names (`names.resolve_names`): each fn is
    checked (`check_hooks_to_add`) and added to its hook point (`HookPoint.add_hook`) as TL does, and
    exactly those hooks are removed at exit. TL's own context rebuilds its name -> hook point table
    and alias map at every entry (~0.3 ms, a few % of a zoo model's generate); the table is fixed
    once the twin is built (`Bridged.hook_points`)."""
    bridge, added = bridged.bridge, []
    try:
        for name, fn in fwd_hooks:
            point = bridged.hook_points[name]
            bridge.check_hooks_to_add(point, name, fn, dir="fwd")
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]


def sync_generation_config(model, twin) -> None:
    """Make the twin generate with the user's current generation config."""
    twin.generation_config = model.generation_config

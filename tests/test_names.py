"""Every exposed hook name that reads a module's input or output holds exactly what a forward hook on
that module of the user's (un-bridged) HF model sees, at every denoising step; the rest (attention
patterns, the encoder cache, the self-conditioning logits, rotary tables, hook_embed) have their own
tests (test_capture, test_patching, test_backends)."""

from __future__ import annotations

import torch

from dgt_interp import capture, list_names
from dgt_interp.backends.tl import bridge_for
from dgt_interp.evaluate import prompt_batch
from dgt_interp.models import build_diffusion

WRAPPERS = ("_original_component", "original_component")


def _module_of_every_name(model) -> dict[str, tuple[str, str]]:
    """name -> (path of the HF module in the user's model, "hook_in" | "hook_out"), aliases resolved."""
    bridged = bridge_for(model, "full")
    bridge = bridged.bridge
    paths = {id(mod): ".".join(p for p in n.split(".") if p not in WRAPPERS) for n, mod in bridged.twin.named_modules()}
    out = {}
    for name in list_names(model):
        comp_path, attr = name.rsplit(".", 1) if "." in name else ("", name)
        try:
            comp = bridge.get_submodule(comp_path) if comp_path else bridge
            aliases = getattr(comp, "hook_aliases", None) or {}
            if attr in aliases:
                target = aliases[attr] if isinstance(aliases[attr], str) else aliases[attr][0]
                sub, attr = target.rsplit(".", 1) if "." in target else ("", target)
                comp = comp.get_submodule(sub) if sub else comp
        except AttributeError:
            continue
        orig = getattr(comp, "original_component", None)
        if orig is not None and attr in ("hook_in", "hook_out") and id(orig) in paths:
            out[name] = (paths[id(orig)], attr)
    return out


def test_every_module_name_equals_a_forward_hook_on_the_hf_model():
    model = build_diffusion(seed=0)
    ids = prompt_batch(["12+34="])["input_ids"]
    targets = _module_of_every_name(model)
    names = list_names(model)
    assert len(targets) >= 0.9 * len(names)  # 228 of 248 on the tiny model
    for alias in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
        assert f"blocks.1.{alias}" in targets, alias  # the block aliases the old warning was about
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, (path, attr) in targets.items():
        def record(module, args, kwargs, output, name=name, attr=attr):
            if attr == "hook_in":
                t = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            else:
                t = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, []).append(t.detach().clone())
        handles.append(model.get_submodule(path).register_forward_hook(record, with_kwargs=True))
    try:
        torch.manual_seed(0)
        want = model.generate(ids, max_denoising_steps=2).sequences
    finally:
        for h in handles:
            h.remove()
    traj = capture(model, ids, seed=0, max_denoising_steps=2, names=list(targets))
    assert torch.equal(traj.sequences, want)
    for name in targets:
        assert len(seen[name]) == traj.n_steps, name  # fires once per denoising step, never on the encoder
        for step in range(traj.n_steps):
            got, hf = traj[name][step], seen[name][step]
            assert torch.equal(got, hf.reshape(got.shape)), (name, step)

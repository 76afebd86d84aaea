"""`StepCache`: TransformerLens' `ActivationCache` of one DiffusionGemma denoising step, with the residual
decomposition tools made exact for this model (or refusing in one line, naming what to record).

TL's versions assume a GPT-style stream (`hook_embed + hook_pos_embed + Σ attn_out + mlp_out`, a final
LayerNorm folded into `W_U`, logits = `resid @ W_U`). DiffusionGemma differs in four places, handled here:

  stream start   block 0 reads `self_cond.hook_out` = `(token embedding + self-conditioning signal) / rms`
                 (a scale-free RMS norm): the "embed" term is that, split into `embed` and `self_cond`
                 (each divided by the same rms) when `self_cond.hook_in` and `self_cond.hook_signal` are recorded.
  blocks         `resid_post = layer_scalar * (resid_pre + attn_out + mlp_out)`: earlier terms carry the
                 product of later layers' scalars (1.0 unless a checkpoint sets them).
  final norm     RMSNorm with a weight, not folded anywhere: `apply_ln` divides by the rms of the total
                 residual being decomposed ("frozen scale") and multiplies the weight, so terms still add up.
  logits         `softcap * tanh(lm_head(norm(resid)) / softcap)` (`final_logit_softcapping`): the terms
                 add up to the logits *before* the soft-cap; `softcap(sum)` gives the model's logits.

Shapes follow TL: `[component, batch, pos, d_model]` stacks, `[component, batch, pos]` logit attributions.
Exactness (tested at every step of a zoo run): `softcap(Σ logit_attrs)` equals the recorded logits to float
rounding (atol 1e-4 at |logits| <= softcap).
"""

from __future__ import annotations

import torch
from transformer_lens.ActivationCache import ActivationCache

from dgt_interp.backends.tl import DIFFUSION_ARCH, architecture_of
from dgt_interp.errors import DgtInterpError


class StepCacheError(DgtInterpError, KeyError):
    """A name the decomposition needs was not recorded at this step (one line naming what to record)."""

    def __str__(self) -> str:  # KeyError quotes its message; this is a sentence
        return str(self.args[0]) if self.args else ""


def _softcap(logits: torch.Tensor, cap) -> torch.Tensor:
    if cap is None:
        return logits
    return torch.tanh(logits.float() / cap) * cap


class StepCache(ActivationCache):
    """`ActivationCache` of one step (`[batch, pos, ...]` per name) whose `accumulated_resid`, `decompose_resid`,
    `apply_ln_to_stack` and `logit_attrs` are exact on DiffusionGemma (see the module doc); `softcap` and
    `logit_attribution` added. `hf_model` is the user's model (final norm, `lm_head`, layer scalars). On the AR
    twin (`exact` False) the four methods are TL's own, unchanged."""

    def __init__(self, cache_dict, model, hf_model, *, step=None, has_batch_dim: bool = True):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        self.hf_model, self.step = hf_model, step
        # the AR twin keeps TL's own versions (this module's corrections are DiffusionGemma's)
        self.exact = architecture_of(hf_model) == DIFFUSION_ARCH

    # ---- lookups with a useful error --------------------------------------------------------------------
    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            name = key if isinstance(key, str) else repr(key)
            at = f" at step {self.step}" if self.step is not None else ""
            raise StepCacheError(f"{name} was not recorded{at}; capture with names=[{name!r}, ...] (e.g. "
                                 "'blocks.*.hook_resid_post', 'blocks.*.hook_attn_out', 'blocks.*.hook_mlp_out') or "
                                 "re-run the step with every name: traj.run_with_cache(step)") from None

    def _need(self, name: str) -> torch.Tensor:
        return self[name]

    # ---- the model's pieces ---------------------------------------------------------------------------
    def _decoder(self):
        if architecture_of(self.hf_model) != DIFFUSION_ARCH:
            raise StepCacheError("exact residual decomposition is implemented for DiffusionGemma; on the AR twin use "
                                 "TransformerLens' tools on its bridge directly")
        return self.hf_model.model.decoder

    @property
    def n_layers(self) -> int:
        return self.hf_model.config.get_text_config().num_hidden_layers

    def _scalars(self) -> list[torch.Tensor]:
        return [layer.layer_scalar.float() for layer in self._decoder().layers[:self.n_layers]]

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's final soft-cap, `cap * tanh(x / cap)`: pre-cap logits (what terms sum to) -> logits."""
        return _softcap(logits, self.hf_model.final_logit_softcapping)

    def _layer(self, layer):
        n = self.n_layers
        if layer is None or layer == -1:
            return n
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise StepCacheError(f"layer {layer!r} is out of range: use 0..{n} (or None / -1 for the final residual)")
        return layer

    def _total(self, layer: int, mlp_input: bool = False) -> torch.Tensor:
        """`[batch, pos, d]` the residual entering `layer` (`n_layers`: the final resid_post)."""
        if layer == self.n_layers:
            return self._need(f"blocks.{layer - 1}.hook_resid_post")
        if mlp_input:
            return self._need(f"blocks.{layer}.hook_resid_mid")
        if layer == 0 and "blocks.0.hook_resid_pre" not in self.cache_dict and "self_cond.hook_out" in self.cache_dict:
            return self.cache_dict["self_cond.hook_out"]
        return self._need(f"blocks.{layer}.hook_resid_pre")

    # ---- TL's API, exact here -------------------------------------------------------------------------
    def apply_ln_to_stack(self, residual_stack, layer=None, mlp_input=False, pos_slice=None, batch_slice=None,
                          has_batch_dim=True, recompute_ln=False):
        """The final RMSNorm applied to a stack `[component, batch, pos, d]`: each term times the norm weight,
        divided by the rms of the total residual at `layer` (frozen scale: the terms still add up to the
        normed total); `recompute_ln=True` normalises each term by its own rms (for stacks of whole states)."""
        if not self.exact:
            return super().apply_ln_to_stack(residual_stack, layer, mlp_input, pos_slice, batch_slice, has_batch_dim,
                                             recompute_ln)
        if pos_slice is not None or batch_slice is not None or not has_batch_dim:
            raise StepCacheError("StepCache.apply_ln_to_stack takes full [component, batch, pos, d] stacks; slice after")
        norm = self._decoder().norm
        stack = residual_stack.float()
        if recompute_ln:
            return torch.stack([norm(c.to(residual_stack.dtype)).float() for c in stack])
        total = self._total(self._layer(layer), mlp_input).float()
        scale = torch.pow(total.pow(2).mean(-1, keepdim=True) + norm.eps, -0.5)
        weight = norm.weight.float() if norm.with_scale else 1.0
        return stack * scale * weight

    def accumulated_resid(self, layer=None, incl_mid=False, apply_ln=False, pos_slice=None, mlp_input=False,
                          return_labels=False):
        """`[layer + 1, batch, pos, d]`: the residual entering each block up to `layer`, then `final_post`
        (labels as TL: `0_pre`, `0_mid`, ..., `final_post`). `apply_ln=True` applies the model's own final
        norm to each state (the logit lens; `lm_head` + `softcap` of the last one = the step's logits)."""
        if not self.exact:
            return super().accumulated_resid(layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)
        if pos_slice is not None:
            raise StepCacheError("StepCache.accumulated_resid takes no pos_slice; index the result's pos axis")
        layer = self._layer(layer)
        comps, labels = [], []
        for lay in range(layer + 1):
            if lay == self.n_layers:
                comps.append(self._total(lay))
                labels.append("final_post")
                continue
            comps.append(self._total(lay))
            labels.append(f"{lay}_pre")
            if (incl_mid and lay < layer) or (mlp_input and lay == layer):
                comps.append(self._need(f"blocks.{lay}.hook_resid_mid"))
                labels.append(f"{lay}_mid")
        stack = torch.stack(comps)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, recompute_ln=True)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer=None, mlp_input=False, mode="all", apply_ln=False, pos_slice=None,
                        incl_embeds=True, return_labels=False):
        """`[component, batch, pos, d]` terms that sum to the residual entering `layer` (None: the final
        residual): `embed` and `self_cond` (or one `embed+self_cond` term if `self_cond.hook_in` /
        `hook_signal` were not recorded), then `{l}_attn_out`, `{l}_mlp_out` per block, each times the
        later blocks' layer scalars. `mode` "all" / "attn" / "mlp" keeps those terms; `apply_ln=True`
        applies the final norm with the total's frozen scale (the terms then sum to the normed residual)."""
        if not self.exact:
            return super().decompose_resid(layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels)
        if pos_slice is not None:
            raise StepCacheError("StepCache.decompose_resid takes no pos_slice; index the result's pos axis")
        if mode not in ("all", "attn", "mlp"):
            raise StepCacheError(f"mode={mode!r}: use 'all', 'attn' or 'mlp'")
        layer = self._layer(layer)
        scalars = self._scalars()

        def carried(first: int) -> torch.Tensor:  # product of the scalars of blocks first..layer-1
            out = torch.ones(())
            for s in scalars[first:layer]:
                out = out * s
            return out

        comps, labels = [], []
        if incl_embeds:
            if "self_cond.hook_in" in self.cache_dict and "self_cond.hook_signal" in self.cache_dict:
                emb, sig = self.cache_dict["self_cond.hook_in"].float(), self.cache_dict["self_cond.hook_signal"].float()
                eps = self._decoder().self_conditioning.post_norm.eps
                scale = torch.pow((emb + sig).pow(2).mean(-1, keepdim=True) + eps, -0.5)
                comps += [emb * scale * carried(0), sig * scale * carried(0)]
                labels += ["embed", "self_cond"]
            else:
                comps.append(self._total(0).float() * carried(0))
                labels.append("embed+self_cond")
        for lay in range(layer + (1 if mlp_input and layer < self.n_layers else 0)):
            if mode in ("all", "attn"):
                comps.append(self._need(f"blocks.{lay}.hook_attn_out").float() * carried(lay))
                labels.append(f"{lay}_attn_out")
            if mode in ("all", "mlp") and lay < layer:
                comps.append(self._need(f"blocks.{lay}.hook_mlp_out").float() * carried(lay))
                labels.append(f"{lay}_mlp_out")
        stack = torch.stack(comps)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None, batch_slice=None,
                    has_batch_dim=True):
        """`[component, batch, pos]` each term's contribution to the pre-soft-cap logit of `tokens`
        (`[batch, pos]` ids, or an int) minus `incorrect_tokens`': `residual_stack` (normed with
        `apply_ln_to_stack`) @ `lm_head`. Terms sum to the pre-cap logit; `softcap` of the sum is the logit."""
        if not self.exact:
            return super().logit_attrs(residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice, has_batch_dim)
        if pos_slice is not None or batch_slice is not None or not has_batch_dim:
            raise StepCacheError("StepCache.logit_attrs takes full [component, batch, pos, d] stacks; slice after")
        w = self.hf_model.lm_head.weight.float()  # [V, d]
        stack = residual_stack.float()

        def dirs(tok):
            tok = torch.as_tensor(tok, device=w.device)
            if tok.dim() == 0:
                tok = tok.expand(stack.shape[1:3])
            return w[tok]  # [batch, pos, d]

        out = (stack * dirs(tokens)).sum(-1)
        if incorrect_tokens is not None:
            out = out - (stack * dirs(incorrect_tokens)).sum(-1)
        return out

    def logit_attribution(self, tokens, incorrect_tokens=None, *, mode="all", return_labels=False):
        """Direct logit attribution of this step: `logit_attrs(decompose_resid(apply_ln=True), tokens)`,
        `[component, batch, pos]` (labels with `return_labels=True`); sums to the pre-cap logit (diff)."""
        stack, labels = self.decompose_resid(mode=mode, apply_ln=True, return_labels=True)
        attrs = self.logit_attrs(stack, tokens, incorrect_tokens)
        return (attrs, labels) if return_labels else attrs


__all__ = ["StepCache", "StepCacheError"]

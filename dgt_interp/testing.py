"""Tools for testing analyses: trajectories with known answers, built by hand.

`constructed_trajectory(argmax_canvas, ...)` makes a real `Trajectory` from given per-step canvases,
so a probe can be checked against a trajectory whose commit order, smearing or drafts are known.
`real_vocab_model(canvas_length)` is a random-init DiffusionGemma with the released vocabulary
(262,144) at a small width: memory behaviour at the real vocabulary, in tests that stay fast.
"""

from __future__ import annotations

import torch

from dgt_interp.sampling import token_entropy
from dgt_interp.trajectory import Trajectory, TrajectoryError


def constructed_trajectory(argmax_canvas: torch.Tensor, *, accepted: torch.Tensor | None = None,
                           sampled_canvas: torch.Tensor | None = None, processed_logits: torch.Tensor | None = None,
                           active: torch.Tensor | None = None, kind: str = "diffusion", noise_token: int = 0,
                           prompt_length: int = 1):
    """A real `Trajectory` built from given per-step canvases (one canvas), to validate detectors.

    argmax_canvas `[S, B, L]`; accepted `[S, B, L]` bool (default: all True); sampled_canvas
    (default: the argmax canvas); processed_logits `[S, B, L, V]` (optional, stored as the opt-in
    record); active `[S, B]` (default all True). The input canvas of step s+1 is what the sampler
    kept after step s (accepted -> sampled, else `noise_token`); entropy comes from the logits if
    given, else 0 where accepted and 1 elsewhere.
    """
    arg = torch.as_tensor(argmax_canvas).long()
    if arg.dim() != 3:
        raise TrajectoryError(f"argmax_canvas must be [step, batch, pos], got shape {tuple(arg.shape)}")
    s_n, b_n, length = arg.shape
    acc = torch.ones_like(arg, dtype=torch.bool) if accepted is None else torch.as_tensor(accepted).bool()
    smp = arg.clone() if sampled_canvas is None else torch.as_tensor(sampled_canvas).long()
    act = torch.ones(s_n, b_n, dtype=torch.bool) if active is None else torch.as_tensor(active).bool()
    inp = torch.full_like(arg, noise_token)
    for s in range(1, s_n):
        inp[s] = torch.where(acc[s - 1], smp[s - 1], torch.full_like(smp[s - 1], noise_token))
    if processed_logits is not None:
        ent = token_entropy(processed_logits.float())
    else:
        ent = (~acc).float()
    records = {"input_canvas": inp, "sampled_canvas": smp, "argmax_canvas": arg, "accepted": acc, "entropy": ent,
               "active": act, "has_self_cond": torch.arange(s_n)[:, None].expand(s_n, b_n) > 0,
               "cur_step": torch.arange(s_n, 0, -1), "canvas": torch.zeros(s_n, dtype=torch.long)}
    acts, fired = {}, {}
    if processed_logits is not None:
        acts["processed_logits"] = processed_logits.float()
        fired["processed_logits"] = [True] * s_n
    meta = {"kind": kind, "prompt_length": prompt_length, "canvas_length": length, "recorded_steps": list(range(s_n)),
            "positions": list(range(length)), "names": [], "record": list(acts), "dtype": None, "backend": "constructed",
            "seed": None, "generation_kwargs": {}, "model_class": "constructed"}
    sequences = torch.cat([torch.zeros(b_n, prompt_length, dtype=torch.long), arg[-1]], 1)
    return Trajectory(meta=meta, sequences=sequences, records=records, activations=acts, fired=fired)


REAL_VOCAB = 262_144  # DiffusionGemma's released vocabulary


def real_vocab_model(canvas_length: int = 32, *, hidden_size: int = 64, num_hidden_layers: int = 2, seed: int = 0):
    """A random-init DiffusionGemma with the released vocabulary (262,144) and a small width (float32, eval).

    The embedding alone is 16.7M parameters (67 MB); one row's `[canvas, vocab]` float32 logits are
    `canvas_length` MiB. Its near-uniform logits make the entropy-bound sampler accept few tokens per
    step, so every run goes the full `max_denoising_steps`: the worst case for memory."""
    from dgt_interp.models import build_diffusion
    from dgt_interp.models.build import TinySize

    size = TinySize(vocab_size=REAL_VOCAB, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, head_dim=16,
                    num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=32, intermediate_size=128,
                    canvas_length=canvas_length, max_position_embeddings=4 * canvas_length + 64)
    return build_diffusion(size, seed=seed)


__all__ = ["constructed_trajectory", "real_vocab_model", "REAL_VOCAB"]

"""Phenomenon probes: general functions of a `Trajectory` (DiffusionGemma or its AR twin).

Each probe returns a small result object with numbers (tensors + `to_dict()` for JSON) and a
`figure()` (a matplotlib `Figure`, built without pyplot). Definitions are *ours* where the paper's
are not public (REFERENCES.md, "Diffusion-specific phenomena"); each is stated in its docstring and
in docs/case_studies.md. Probes are registered (`register_probe`): every registered probe runs in
`detect_phenomena` and shows up in the studies' phenomena tables.

Common ground (all probes):

- They work per canvas (`canvas=0` by default): the steps of that canvas, in execution order,
  re-indexed from 0 (`k` = the k-th step of the canvas). A row's steps are those where it is
  `active` (`Trajectory.row_steps`); its **final** token at position p is its argmax canvas at its
  last active step (`Trajectory.final_tokens`, what `generate` emits).
- `eos_id`: if given, only positions up to and including the first EOS of the final canvas are
  analysed (the answer, `Trajectory.answer_mask`); positions after it are padding.
- AR twin trajectories have the same layout (step k writes position k), so every record-only
  probe runs unchanged and gives the chronological reference: commit step of position p = p.

Modules: `commit` (non-chronological reasoning: `commit_order`), `smearing` (`token_smearing`,
`sequence_smearing`), `drafts` (`find_drafts`, `draft_effects`), `flips` (the causal
`canvas_flips`: patch the input canvas at (step, q) from a source run), `registry`, `linear`
(`register_linear_probe`: linear probes over (step, layer) with a control task, as registered probes),
`detect`.
"""

from dgt_interp.phenomena.base import PhenomenaError
from dgt_interp.phenomena.commit import COMMIT_BY, CommitOrder, commit_order
from dgt_interp.phenomena.detect import detect_phenomena
from dgt_interp.phenomena.drafts import Draft, DraftEffects, Drafts, draft_effects, find_drafts
from dgt_interp.phenomena.flips import CHANNELS, CanvasFlips, canvas_flips
from dgt_interp.phenomena.linear import register_linear_probe
from dgt_interp.phenomena.registry import (Probe, ProbeResult, builtin_probe_names, extra_probe_results,
                                           extra_probe_table, get_probe, probes, recorded_names, register_probe,
                                           run_probes, unregister_probe)
from dgt_interp.phenomena.smearing import SequenceSmearing, TokenSmearing, sequence_smearing, token_smearing

__all__ = [
    "PhenomenaError", "COMMIT_BY", "CHANNELS",
    "CommitOrder", "commit_order", "TokenSmearing", "token_smearing", "SequenceSmearing", "sequence_smearing",
    "Draft", "Drafts", "find_drafts", "CanvasFlips", "canvas_flips", "DraftEffects", "draft_effects",
    "Probe", "ProbeResult", "register_probe", "register_linear_probe", "unregister_probe", "probes", "get_probe",
    "recorded_names", "builtin_probe_names", "run_probes",
    "extra_probe_results", "extra_probe_table", "detect_phenomena",
]

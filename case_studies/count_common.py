"""What the two count-task studies share (`smearing`, `intermediate_context`): the task's algorithm as
causal models, pair samplers, sampler settings and record-level measures of the count and the list.

Problems (`dgt_interp.tasks.COUNT`): prompt `<bos>7291538[3-7]?` (3-8 digits, then a range), answer
`3:753` = the count, ':', then the digits that lie in [lo, hi] in input order, then EOS. Canvas
position 0 holds the count, 1 the ':', 2..1+n the list, 2+n the EOS. Prompts of different lengths
share one batch (left padding), so canvas position p means answer character p in every row.

High-level causal models (`dgt_interp.studies.CausalModel`), inputs x (digits), lo, hi:

- `COUNT_MODEL` (the task's own algorithm, list first): m = membership of each input digit,
  list = the members in input order, n = len(list), answer = f"{n}:{list}". Setting `list` from a
  source sets the count too (count := len(list)); setting `n` changes the count character only.
- `layout_model(anchor)` (smearing: the count decides where list tokens land): the answer has n
  list slots after "n:", then EOS. "left": slot k holds list[k] (rank from the start); "right":
  slot k holds list[len(list) - n + k] (rank from the end, so a different n shifts every token).
  A slot with no member is '#' (any digit matches, `CountHypothesis`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from case_studies.samplers import sampler_grid
from dgt_interp.causal import CaseStudyError, CausalModel, Hypothesis
from dgt_interp.evaluate import prompt_batch
from dgt_interp.phenomena import detect_phenomena
from dgt_interp.tasks import COUNT, EOS_ID, VOCAB, Problem, decode_answer

COUNT_POS, COLON_POS, LIST_START = 0, 1, 2
WILDCARD = "#"
_PROMPT = re.compile(r"^(\d+)\[(\d)-(\d)\]\?$")


def parse(problem: Problem) -> tuple[tuple[int, ...], int, int]:
    """(digits, lo, hi) of a count prompt like '7291538[3-7]?'."""
    m = _PROMPT.match(problem.prompt)
    if not m:
        raise CaseStudyError(f"{problem.prompt!r} is not a count prompt like '7291538[3-7]?'")
    return tuple(int(c) for c in m.group(1)), int(m.group(2)), int(m.group(3))


def _inputs(problem: Problem) -> dict:
    x, lo, hi = parse(problem)
    return {"x": x, "lo": lo, "hi": hi}


def _base_variables() -> dict:
    return {"m": lambda v: tuple(v["lo"] <= d <= v["hi"] for d in v["x"]),
            "list": lambda v: tuple(d for d, inside in zip(v["x"], v["m"]) if inside),
            "n": lambda v: len(v["list"])}


COUNT_MODEL = CausalModel(inputs=_inputs, variables={**_base_variables(),
                                                     "answer": lambda v: f"{v['n']}:" + "".join(map(str, v["list"]))},
                          output="answer")


def layout(members: tuple[int, ...], n: int, anchor: str) -> str:
    """n list slots filled from `members` by rank from the start ("left") or the end ("right"); '#' = no member."""
    if anchor not in ("left", "right"):
        raise CaseStudyError(f"anchor must be 'left' or 'right', got {anchor!r}")
    off = 0 if anchor == "left" else len(members) - n
    return "".join(str(members[off + k]) if 0 <= off + k < len(members) else WILDCARD for k in range(n))


def layout_model(anchor: str) -> CausalModel:
    """The count n decides where the list tokens land (see the module docstring)."""
    layout((), 0, anchor)  # validate
    return CausalModel(inputs=_inputs, variables={**_base_variables(),
                                                  "answer": lambda v: f"{v['n']}:" + layout(v["list"], v["n"], anchor)},
                       output="answer")


LEFT_MODEL, RIGHT_MODEL = layout_model("left"), layout_model("right")
COMPARE = ("answer", "count", "length", "list")


@dataclass(frozen=True)
class CountHypothesis(Hypothesis):
    """A `Hypothesis` compared on `compare`: "answer" (every character, '#' matching any digit),
    "count" (the count character only), "length" (where EOS lands: the answer's length only), "list"
    (everything after the count: the list and where EOS lands, whatever count was emitted)."""

    compare: str = "answer"

    def __post_init__(self):
        if self.compare not in COMPARE:
            raise CaseStudyError(f"compare must be one of {', '.join(COMPARE)}, got {self.compare!r}")

    def matches(self, output: str, expected: str) -> bool:
        if self.compare == "count":
            return output[:1] == expected[:1] != ""
        if len(output) != len(expected):
            return False
        if self.compare == "length":
            return True
        start = 1 if self.compare == "list" else 0
        return all(e == o or (e == WILDCARD and o.isdigit()) for o, e in zip(output[start:], expected[start:]))


def sample_problem(rng: random.Random, min_count: int = 1) -> Problem:
    """A count problem from the task's distribution with at least `min_count` members."""
    while True:
        p = COUNT.sample(rng)
        if len(COUNT_MODEL.run(p)["list"]) >= min_count:
            return p


def count_pairs(n_pairs: int, seed: int = 0, tag: str = "count") -> list[tuple[Problem, Problem]]:
    """(base, source) pairs, both with a non-empty list, whose counts differ (so a variable set from the
    source changes the count character: every pair is informative for it)."""
    rng = random.Random(f"{tag}-pairs:{seed}")
    out = []
    while len(out) < n_pairs:
        base, src = sample_problem(rng), sample_problem(rng)
        if COUNT_MODEL.run(base)["n"] != COUNT_MODEL.run(src)["n"]:
            out.append((base, src))
    return out


def sampler_settings(quick: bool) -> dict[str, dict]:
    """name -> generate kwargs (`case_studies.samplers`). The zoo default (entropy bound 0.1) first; then
    settings that resolve the canvas over more steps. The last entry is the slowest ("many steps")."""
    if quick:
        return sampler_grid(["eb=0.1 (default)", "eb=1e-4, strict stop"])
    return sampler_grid(["eb=0.1 (default)", "eb=1e-3", "eb=1e-4, strict stop", "eb=1e-4, strict stop, T=1.2-1.6"])


def run_prompts(model, problems: list[Problem], seed: int, **generation_kwargs):
    """`phenomena.detect_phenomena` on a batch of problems, plus the decoded answers:
    returns (trajectory, answers, detector results incl. "accuracy")."""
    traj, res = detect_phenomena(model, problems, seed=seed, **generation_kwargs)
    n_prompt = prompt_batch([p.prompt for p in problems])["input_ids"].shape[1]
    return traj, [decode_answer(r) for r in traj.sequences[:, n_prompt:]], res


def digit_of(token: int) -> int | None:
    """The digit a task token id stands for (None for any other token)."""
    tok = VOCAB[token] if 0 <= token < len(VOCAB) else ""
    return int(tok) if tok.isdigit() else None


@dataclass
class CountTrace:
    """Per (row, canvas step) reading of the argmax canvas as a count answer (DiffusionGemma or AR).

    written `[B, K]`: the digit at the count position (-1 if not a digit); eos `[B, K]`: the first EOS
    position (-1 if none); list_len `[B, K]`: EOS position - 2 (the drafted list's length; -1 if no EOS
    after the colon); list_ok `[B, K]`: the drafted list (positions 2.. up to EOS) equals the final one;
    active `[B, K]`; final_count / final_len `[B]`: the emitted count digit and list length; true_count `[B]`.
    NaN-free: inactive steps are masked by `active`.
    """

    written: torch.Tensor
    eos: torch.Tensor
    list_len: torch.Tensor
    list_ok: torch.Tensor
    active: torch.Tensor
    final_count: torch.Tensor
    final_len: torch.Tensor
    true_count: torch.Tensor
    kind: str

    def summary(self) -> dict:
        """Headline rates over (row, step) pairs before each row's last step."""
        b_n, k_n = self.written.shape
        last = self.active.long().cumsum(1).argmax(1)  # each row's last active step
        before = self.active & (torch.arange(k_n)[None] < last[:, None])
        wrong_draft = before & (self.written != self.final_count[:, None])
        rows_wrong = wrong_draft.any(1)
        consistent = self.active & (self.written >= 0) & (self.list_len >= 0)
        n_cons = int(consistent.sum())
        agree = int((consistent & (self.written == self.list_len)).sum())
        # rows whose count was drafted wrong and is emitted right: was the list already final when the count settled?
        corrected = rows_wrong & (self.final_count == self.true_count)
        settle = torch.full((b_n,), -1)
        for b in range(b_n):
            ok = (self.written[b] == self.final_count[b]) | ~self.active[b]
            tail = ok.flip(0).long().cumprod(0).sum()
            settle[b] = k_n - int(tail)
        list_first = [bool(self.list_ok[b, max(int(settle[b]) - 1, 0)]) for b in range(b_n) if bool(corrected[b])]
        return {"rows": b_n, "kind": self.kind,
                "rows_with_a_wrong_count_draft": int(rows_wrong.sum()),
                "rows_count_corrected": int(corrected.sum()),
                "corrected_with_list_already_final": sum(list_first),
                "fraction_steps_count_matches_drafted_list": agree / n_cons if n_cons else float("nan"),
                "steps_with_count_and_list": n_cons,
                "emitted_count_matches_emitted_list": float((self.final_count == self.final_len).float().mean()),
                "emitted_count_correct": float((self.final_count == self.true_count).float().mean())}


def count_trace(traj, problems: list[Problem], canvas: int = 0) -> CountTrace:
    """Read each step's argmax canvas (`Trajectory.row_steps` order) as count + list."""

    steps = traj.row_steps(canvas)
    k_n = max(len(s) for s in steps)
    arg = traj.records["argmax_canvas"]
    b_n, length = arg.shape[1], arg.shape[2]
    written = torch.full((b_n, k_n), -1)
    eos = torch.full((b_n, k_n), -1)
    list_ok = torch.zeros(b_n, k_n, dtype=torch.bool)
    active = torch.zeros(b_n, k_n, dtype=torch.bool)
    final = traj.final_tokens(canvas)

    def read(row: torch.Tensor) -> tuple[int, int]:
        d = digit_of(int(row[COUNT_POS]))
        hits = (row[LIST_START - 1:] == EOS_ID).nonzero()
        return (-1 if d is None else d), (int(hits[0]) + LIST_START - 1 if len(hits) else -1)

    f_count, f_eos = zip(*(read(final[b]) for b in range(b_n)))
    for b, st in enumerate(steps):
        fe = f_eos[b]
        for k, s in enumerate(st):
            row = arg[s, b]
            written[b, k], eos[b, k] = read(row)
            active[b, k] = True
            e = int(eos[b, k])
            list_ok[b, k] = e == fe and e >= 0 and bool((row[LIST_START:e] == final[b, LIST_START:e]).all())
    list_len = torch.where(eos >= LIST_START, eos - LIST_START, torch.full_like(eos, -1))
    true = torch.tensor([COUNT_MODEL.run(p)["n"] for p in problems])
    f_len = torch.tensor([e - LIST_START if e >= LIST_START else -1 for e in f_eos])
    return CountTrace(written, eos, list_len, list_ok, active, torch.tensor(f_count), f_len, true, traj.kind)


@dataclass
class EosSmearing:
    """Where the end of the list is expected, per canvas step: mass `[K, D]` = mean over active rows of
    P(EOS at final EOS position + d) (softmax of processed logits, or the argmax indicator), offsets
    `[-max_offset, max_offset]`. Mass off d = 0 is length uncertainty: the EOS smeared over positions."""

    mass: torch.Tensor
    offsets: list[int]
    source: str
    kind: str

    def off_centre(self) -> torch.Tensor:
        """`[K]` summed mass at d != 0."""
        cols = [j for j, d in enumerate(self.offsets) if d != 0]
        return torch.nan_to_num(self.mass[:, cols]).sum(-1)

    def to_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "offsets": self.offsets,
                "mass": self.mass.tolist(), "off_centre_by_step": self.off_centre().tolist(),
                "peak_off_centre": float(self.off_centre().max()) if self.mass.numel() else float("nan")}

    def figure(self, title: str = ""):
        fig = Figure(figsize=(1.8 + 0.5 * len(self.offsets), 1.4 + 0.3 * self.mass.shape[0]), layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(self.mass.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(self.offsets)), [f"{d:+d}" for d in self.offsets])
        ax.set_xlabel("offset from the final EOS position")
        ax.set_ylabel("canvas step")
        fig.colorbar(im, ax=ax, label="mean P(EOS)" if self.source == "probs" else "mean EOS indicator")
        ax.set_title(title or f"where the list ends ({self.kind})", fontsize=10)
        return fig


def eos_smearing(traj, canvas: int = 0, max_offset: int = 2, source: str = "auto") -> EosSmearing:
    """`EosSmearing` of a trajectory (rows whose final canvas has an EOS; steps in `row_steps` order).
    `source`: "probs" (recorded processed logits), "argmax", or "auto" (probs if recorded)."""

    steps, active = traj.active_rows(canvas)
    final = traj.final_tokens(canvas)
    has = (final == EOS_ID).any(-1)
    e_pos = (final == EOS_ID).long().argmax(-1)
    if source == "auto":
        source = "probs" if "processed_logits" in traj.names else "argmax"
    if source == "probs":
        vals = torch.softmax(traj["processed_logits"][[traj.step_index(s) for s in steps]].float(), -1)[..., EOS_ID]
    else:
        vals = (traj.records["argmax_canvas"][torch.tensor(steps)] == EOS_ID).float()  # [K, B, L]
    offsets = list(range(-max_offset, max_offset + 1))
    length = final.shape[1]
    mass = torch.full((len(steps), len(offsets)), float("nan"))
    for j, d in enumerate(offsets):
        q = e_pos + d
        ok = has & (q >= 0) & (q < length)
        v = vals.gather(-1, q.clamp(0, length - 1)[None, :, None].expand(len(steps), -1, 1))[..., 0]  # [K, B]
        w = active & ok[None]
        n = w.sum(-1)
        mass[:, j] = torch.where(n > 0, (v * w).sum(-1) / n.clamp(min=1), torch.tensor(float("nan")))
    return EosSmearing(mass, offsets, source, traj.kind)


def offcentre_mass(ts, min_rows: float = 0.25) -> dict:
    """Token smearing (`phenomena.TokenSmearing`) in two numbers robust to late steps where few rows are
    still active: `mean` = sum over offsets d != 0 of the (row, position)-weighted mean mass at d over
    all steps; `peak` (+ its step and offset) = the largest off-centre mass among steps where at least
    `min_rows` of the step-0 (row, position) pairs are still counted."""
    zero = ts.offsets.index(0)
    cnt, mass = ts.counts, torch.nan_to_num(ts.mass)
    mean = sum(float((mass[:, j] * cnt[:, j]).sum() / cnt[:, j].sum().clamp(min=1))
               for j, d in enumerate(ts.offsets) if d != 0)
    ok = cnt[:, zero] >= min_rows * cnt[0, zero]
    m = mass.clone()
    m[:, zero] = -1
    m[~ok] = -1
    i = int(m.argmax())
    k, j = divmod(i, m.shape[1])
    return {"mean": mean, "peak": float(m[k, j]) if m.numel() else float("nan"), "peak_step": k,
            "peak_offset": ts.offsets[j], "min_rows": min_rows}


__all__ = ["COUNT_POS", "COLON_POS", "LIST_START", "WILDCARD", "parse", "COUNT_MODEL", "layout", "layout_model",
           "LEFT_MODEL", "RIGHT_MODEL", "CountHypothesis", "sample_problem", "count_pairs", "sampler_settings",
           "run_prompts", "digit_of", "CountTrace", "count_trace", "EosSmearing", "eos_smearing",
           "offcentre_mass"]

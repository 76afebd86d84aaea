"""Linear probes: held-out accuracy on data with a known answer, the control task, and the packaged carry probe
(acceptance: >= 0.95 held-out at the lower digit's position from layer 1, selectivity reported)."""

from __future__ import annotations

import pytest
import torch

from dgt_interp.probing import ProbeError, control_labels, fit_probe, linear_probe, split


def _data(n=400, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long(), torch.randint(2, (n,), generator=g)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_probe_decodes_a_linear_variable_and_not_noise(kind):
    x, y, noise = _data()
    train, test = split(len(x), 0.5, seed=0)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == len(x)
    assert fit_probe(x, y, train, test, kind=kind)[1] >= 0.95        # a linear rule: decodable held out
    assert fit_probe(x, noise, train, test, kind=kind)[1] <= 0.62    # coin flips: chance held out (n = 200)


def test_control_task_is_a_random_function_of_the_type():
    types = [i % 7 for i in range(200)]
    labels = torch.tensor([i % 2 for i in range(200)])
    ctl = control_labels(types, labels, seed=1)
    for t in range(7):
        assert len({int(ctl[i]) for i in range(200) if types[i] == t}) == 1   # one label per type
    assert torch.equal(ctl, control_labels(types, labels, seed=1))            # seeded


def test_linear_probe_refusals(tiny_diffusion):
    from dgt_interp import capture
    from dgt_interp.evaluate import prompt_batch

    b = prompt_batch(["12+34=", "5+6=", "7+8="])
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], names="blocks.*.hook_resid_post",
                   positions=[1], max_denoising_steps=2)
    with pytest.raises(ProbeError, match="position 0 was not recorded"):
        linear_probe(traj, [0, 1, 0], position=0)
    with pytest.raises(ProbeError, match="one label per prompt"):
        linear_probe(traj, [0, 1], position=1)


def test_carry_probe_on_the_zoo_model(addition_diffusion):
    from case_studies.addition.carry_probe import carry_probe

    res = carry_probe(addition_diffusion, j=2, n=512, seed=0)
    assert res.n_test == 256 and res.layers == 4
    assert bool((res.accuracy[:, 1:] >= 0.95).all()), res.accuracy        # from layer 1, at every step
    assert bool((res.selectivity[:, 1:] >= 0.15).all()), res.selectivity  # not just memorised column digits
    d = res.to_dict()
    assert d["summary"] >= 0.95 and len(d["selectivity"]) == len(res.steps)
    assert len(res.figure().axes[0].texts) == res.accuracy.numel()


# --- linear probes in the probe registry (issue 14, item 5) ---------------------------------------


def test_a_probe_that_needs_problems_runs_only_when_given_them(tiny_diffusion):
    from dgt_interp.phenomena import (PhenomenaError, get_probe, probes, recorded_names, register_probe, run_probes,
                                      unregister_probe)
    from dgt_interp.phenomena.commit import CommitOrder

    seen = {}

    def count(traj, *, eos_id=None, problems):
        seen["n"] = len(problems)
        return None if problems[0] == "skip" else CommitOrder(torch.zeros(1, 1), torch.ones(1), torch.zeros(1), "argmax",
                                                              "diffusion")

    register_probe("needs_problems", count, needs=("problems",), records=("blocks.0.hook_resid_post",))
    try:
        assert get_probe("needs_problems").needs == ("problems",)
        assert "needs_problems" in [p.name for p in probes()]
        assert "blocks.0.hook_resid_post" in recorded_names()
        traj = _tiny_traj(tiny_diffusion)
        assert "needs_problems" not in run_probes(traj)                      # not given its input: left out
        assert "needs_problems" in run_probes(traj, problems=["a", "b"]) and seen["n"] == 2
        assert "needs_problems" not in run_probes(traj, problems=["skip"])   # returned None: not applicable
        with pytest.raises(PhenomenaError, match="needs problems"):
            get_probe("needs_problems")(traj)
        with pytest.raises(PhenomenaError, match="needs='eos_id'"):
            register_probe("bad", count, needs=("eos_id",))
    finally:
        unregister_probe("needs_problems")
    with pytest.raises(PhenomenaError, match="no probe named 'needs_problems'"):
        get_probe("needs_problems")


def _tiny_traj(model):
    from dgt_interp import capture
    from dgt_interp.evaluate import prompt_batch

    b = prompt_batch(["12+34=", "5+6="])
    return capture(model, b["input_ids"], attention_mask=b["attention_mask"], max_denoising_steps=2)


def test_carry_probe_registered_runs_in_detect_phenomena(addition_diffusion):
    """The registered linear probe equals `linear_probe` on the same run with labels from the causal model,
    decodes the carry from layer 1, shows in the study tables' probe column and is left out elsewhere."""
    import random

    from case_studies.addition.carry_probe import register_carry_probe
    from case_studies.addition.hypothesis import sample_problem
    from dgt_interp.phenomena import detect_phenomena, extra_probe_results, extra_probe_table, unregister_probe
    from dgt_interp.tasks import Problem

    torch.set_num_threads(1)
    rng = random.Random(7)
    problems = [sample_problem(rng) for _ in range(192)]
    probe = register_carry_probe(2)
    try:
        assert probe.name == "carry_c2" and probe.records == ("blocks.*.hook_resid_post",)
        traj, res = detect_phenomena(addition_diffusion, problems)
        got = res["carry_c2"]
        # independent labels: the carry into column 2 from the operands' last two digits
        ops = [[int(t) for t in p.prompt.rstrip("=").split("+")] for p in problems]
        labels = [int(a % 100 + b % 100 >= 100) for a, b in ops]
        types = [((a // 10) % 10, (b // 10) % 10) for a, b in ops]
        ref = linear_probe(traj, labels, position=2, types=types)
        assert torch.equal(got.accuracy, ref.accuracy) and torch.equal(got.control_accuracy, ref.control_accuracy)
        assert bool((got.accuracy[:, 1:] >= 0.9).all()), got.accuracy
        extra = extra_probe_results(res)
        assert extra["carry_c2"]["summary"] == float(got.accuracy.max())
        assert "carry_c2" in extra_probe_table({"default": extra})
        # another task's problems (label None) and bare strings: the probe is left out, the rest runs
        _, other = detect_phenomena(addition_diffusion, [Problem("12+34=", "46"), Problem("5+6=", "11")])
        assert "carry_c2" not in other and "commit_argmax" in other
        _, bare = detect_phenomena(addition_diffusion, ["1234+4321="])
        assert "carry_c2" not in bare
    finally:
        unregister_probe("carry_c2")

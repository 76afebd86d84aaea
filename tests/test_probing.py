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

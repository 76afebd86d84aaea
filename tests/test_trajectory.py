"""Trajectory: stacking, selection, save/load round trip, on-disk storage."""

from __future__ import annotations

import json

import pytest
import torch

from dgt_interp import Trajectory, capture
from dgt_interp.evaluate import prompt_batch
from dgt_interp.trajectory import TrajectoryError

NAMES = ["blocks.*.hook_resid_post", "self_cond.hook_logits_in", "blocks.0.mlp.hook_out"]


@pytest.fixture(scope="module")
def run(tiny_diffusion):
    b = prompt_batch(["12+34=", "5+6="])
    kw = dict(attention_mask=b["attention_mask"], seed=4, names=NAMES, record="processed_logits",
              max_new_tokens=16, max_denoising_steps=4)
    return b, kw, capture(tiny_diffusion, b["input_ids"], **kw)


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert set(a.records) == set(b.records)
    for k in a.records:
        assert torch.equal(a.records[k], b.records[k]), k
    assert a.names == b.names and a.recorded_steps == b.recorded_steps and a.positions == b.positions
    for n in a.names:
        assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]), n
        assert torch.equal(a.fired(n), b.fired(n))


def test_layout(run, tiny_diffusion):
    _, _, traj = run
    s = traj.n_steps
    assert traj.canvas.tolist() == [0] * 4 + [1] * 4 and s == 8
    assert traj.input_canvas.shape == (s, 2, 8) and traj.accepted.dtype == torch.bool
    assert traj["blocks.2.hook_resid_post"].shape == (s, 2, 8, 128)
    assert traj.stack("blocks.*.hook_resid_post").shape == (s, 4, 2, 8, 128)
    assert traj["blocks.0.mlp.hook_out"].shape == (s, 2, 8, 128)
    assert traj["processed_logits"].shape == (s, 2, 8, 32)
    assert traj.fired("self_cond.hook_logits_in").tolist() == [False, True, True, True] * 2
    assert (traj["self_cond.hook_logits_in"][4] == 0).all()  # not fired: zeros
    with pytest.raises(TrajectoryError, match="capture"):
        traj["blocks.0.hook_resid_pre"]
    with pytest.raises(TrajectoryError, match="recorded steps: 0..7"):
        traj.cache(12)


def test_save_load_round_trip(run, tmp_path, tiny_diffusion):
    _, _, traj = run
    traj.save(tmp_path / "t")
    back = Trajectory.load(tmp_path / "t", model=tiny_diffusion)
    assert_same(traj, back)
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["kind"] == "diffusion"
    assert not list((tmp_path / "t").rglob("*.tmp"))
    assert_same(traj, back.to_memory())
    back.save(tmp_path / "u")  # a loaded trajectory saves again, equal
    assert_same(traj, Trajectory.load(tmp_path / "u"))
    with pytest.raises(TrajectoryError, match="meta.json"):
        Trajectory.load(tmp_path / "missing")


def test_disk_storage_equals_memory(run, tmp_path, tiny_diffusion):
    b, kw, traj = run
    on_disk = capture(tiny_diffusion, b["input_ids"], storage="disk", out_dir=tmp_path / "d", **kw)
    assert len(list((tmp_path / "d" / "steps").glob("*.safetensors"))) == traj.n_steps
    assert on_disk.nbytes < traj.nbytes
    assert_same(traj, on_disk)
    assert_same(traj, Trajectory.load(tmp_path / "d"))


def test_bfloat16_round_trip(tiny_diffusion, tmp_path):
    b = prompt_batch(["1+2="])
    traj = capture(tiny_diffusion, b["input_ids"], names="blocks.1.hook_resid_post", dtype=torch.bfloat16,
                   max_denoising_steps=3, steps=[0, 2], positions=slice(2, 6))
    traj.save(tmp_path)
    back = Trajectory.load(tmp_path)
    assert back["blocks.1.hook_resid_post"].dtype == torch.bfloat16
    assert back["blocks.1.hook_resid_post"].shape == (2, 1, 4, 128)
    assert_same(traj, back)


def test_replayed_noise_is_the_seeded_stream_in_any_order_and_holds_one_step():
    from dgt_interp.sampling import ReplayedNoise, SamplingError

    vocab, length, steps = 11, 4, 3
    g = torch.Generator().manual_seed(5)
    ref = []  # canvas c: init, then (exp, renoise) per step: the order HF's batch-1 generate draws
    for _ in range(2):
        init = torch.randint(0, vocab, (1, length), generator=g)
        draws = []
        for _ in range(steps):
            exp = torch.empty((length, vocab)).exponential_(generator=g)
            draws.append((exp, torch.randint(0, vocab, (1, length), generator=g)))
        ref.append((init, draws))
    noise = ReplayedNoise(5).bind(vocab, length, steps, "cpu")
    assert torch.equal(noise.exponential(1, 2), ref[1][1][2][0])  # far ahead first: drawn through, nothing kept
    assert torch.equal(noise.initial_canvas(0), ref[0][0])
    for c in (0, 1):
        for k in range(steps):
            assert torch.equal(noise.exponential(c, k), ref[c][1][k][0])
            assert torch.equal(noise.renoise(c, k), ref[c][1][k][1])
    assert torch.equal(noise.initial_canvas(1), ref[1][0])
    big = [v for v in vars(noise).values() if isinstance(v, torch.Tensor)]
    assert not big and all(t.numel() < 10_000 for t in noise._states.values())  # generator states, no [L, V] tables
    with pytest.raises(SamplingError, match="use a new ReplayedNoise"):
        noise.bind(vocab + 1, length, steps, "cpu")


def _fingerprint_by_hand(model) -> str:
    """The fingerprint's definition, one tensor at a time (what `model_fingerprint` batches)."""
    import hashlib

    h = hashlib.sha256(type(model).__name__.encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().reshape(-1)[:64].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:32]


def test_model_fingerprint_is_its_definition_and_sees_in_place_edits():
    from dgt_interp.models import build_diffusion
    from dgt_interp.trajectory import model_fingerprint

    model = build_diffusion(seed=2)
    before = model_fingerprint(model)
    assert before == _fingerprint_by_hand(model)
    model.lm_head.weight.data[0, 0] += 1.0  # no version bump, same tensor object: still seen
    assert model_fingerprint(model) == _fingerprint_by_hand(model) != before
    half = model.to(torch.bfloat16)
    assert model_fingerprint(half) == _fingerprint_by_hand(half)


def test_token_entropy_is_categorical_entropy():
    from dgt_interp.sampling import token_entropy

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        logits = (torch.randn(3, 5, 40, generator=g) * 6).to(dtype)
        logits[0, 0, :7] = float("-inf")
        assert torch.equal(token_entropy(logits), torch.distributions.Categorical(logits=logits).entropy())

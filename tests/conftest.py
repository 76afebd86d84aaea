"""Shared fixtures: tiny random-init models (built once per session) and zoo models."""

from __future__ import annotations

import os

# No test touches the network: huggingface_hub reads this once, at import, so it must be set before
# anything imports transformers (setting it later made a test wait ~23 s on the hub).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the machine has 2 cores; leave one for other work


def pytest_addoption(parser):
    parser.addoption("--realistic", action="store_true",
                     help="also run tests marked `realistic` (models at the released 26B-A4B shapes: ~5 GB, minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--realistic"):
        return
    skip = pytest.mark.skip(reason="a model at the released shapes (~5 GB, minutes): run with --realistic")
    for item in items:
        if "realistic" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_diffusion():
    """A random-init DiffusionGemma of the zoo's size (eval mode)."""
    from dgt_interp.models import build_diffusion

    return build_diffusion(seed=0)


@pytest.fixture(scope="session")
def tiny_ar():
    """A random-init Gemma 4 AR twin of the same size (eval mode)."""
    from dgt_interp.models import build_ar

    return build_ar(seed=0)


def _zoo_model(name):
    from dgt_interp import zoo
    from dgt_interp.models import load_model

    if name not in zoo.names():
        pytest.skip(f"zoo model {name} not shipped")
    return load_model(name)


@pytest.fixture(scope="session")
def addition_diffusion():
    return _zoo_model("addition-diffusion")


@pytest.fixture(scope="session")
def addition_ar():
    return _zoo_model("addition-ar")


@pytest.fixture(scope="session")
def sort_diffusion():
    return _zoo_model("sort-diffusion")


@pytest.fixture(scope="session")
def sort_ar():
    return _zoo_model("sort-ar")


OUTSIDE_PROBE = '''
from matplotlib.figure import Figure

from dgt_interp.phenomena import register_probe


class StepCount:
    def __init__(self, n):
        self.n = n

    def to_dict(self):
        return {"summary": self.n, "steps": self.n}

    def figure(self, title=""):
        return Figure()


@register_probe("outside_step_count", description="denoising steps of canvas 0, from a file outside the package")
def step_count(traj, *, eos_id=None):
    return StepCount(len(traj.canvas_steps(0)))
'''


@pytest.fixture
def outside_probe(tmp_path):
    """A probe registered by importing a file outside the package (`outside_step_count`: canvas 0's
    steps); unregistered afterwards."""
    import importlib.util

    from dgt_interp.phenomena import probes, unregister_probe

    path = tmp_path / "my_probes.py"
    path.write_text(OUTSIDE_PROBE)
    spec = importlib.util.spec_from_file_location("my_probes", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield "outside_step_count"
    if "outside_step_count" in [p.name for p in probes()]:  # a test may have unregistered it already
        unregister_probe("outside_step_count")

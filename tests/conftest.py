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

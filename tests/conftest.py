"""Shared fixtures: tiny configs, offline hub, deterministic torch."""

import os

# Before torch loads OpenMP: spinning worker threads make steps up to 10x slower on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    from astropt_hf import AstroPTConfig

    def make(**overrides):
        kwargs = dict(
            image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
        )
        kwargs.update(overrides)
        return AstroPTConfig(**kwargs)

    return make

"""Shared fixtures: tiny configs, offline hub, deterministic torch."""

import os

import pytest
import torch

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

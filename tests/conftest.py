"""Shared fixtures: tiny configs, offline hub, deterministic torch."""

import os
import sys
import types
from dataclasses import dataclass

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


@pytest.fixture
def upstream_modality_classes(monkeypatch):
    """Call it for astropt's real ModalityConfig / ModalityRegistry if installed, else look-alikes.

    The look-alikes are registered as `astropt.model` for the rest of the test (so objects made from them
    pickle under the names upstream checkpoints carry); that is why this hands back a function, which the
    test calls only once it knows it needs the classes.
    """

    def classes():
        try:
            from astropt.model import ModalityConfig, ModalityRegistry

            return ModalityConfig, ModalityRegistry
        except ImportError:
            pass
        package, module = types.ModuleType("astropt"), types.ModuleType("astropt.model")

        @dataclass
        class ModalityConfig:
            name: str
            input_size: int
            pos_input_size: int
            patch_size: int
            embed_pos: bool
            loss_weight: float = 1.0

        class ModalityRegistry:
            def __init__(self, modalities):
                self.modalities = {m.name: m for m in modalities}

        for cls in (ModalityConfig, ModalityRegistry):
            cls.__module__, cls.__qualname__ = "astropt.model", cls.__name__
            setattr(module, cls.__name__, cls)
        package.model = module
        monkeypatch.setitem(sys.modules, "astropt", package)
        monkeypatch.setitem(sys.modules, "astropt.model", module)
        return ModalityConfig, ModalityRegistry

    return classes


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and on a busy 2-core machine two OpenMP threads per
    process spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Property-based tests draw the same examples on every run (a CI failure can then be replayed exactly);
# HYPOTHESIS_PROFILE=explore draws fresh ones for a fuzzing session. hypothesis comes with the dev extra.
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""Loading upstream `ckpt.pt` files never runs code from the file."""

import builtins
import os
import pickle
import subprocess
import sys

import pytest
import torch

from astropt_hf.conversion import UnsafeCheckpointError, load_upstream_checkpoint
from astropt_hf.conversion.upstream_classes import UpstreamModalityConfig, UpstreamModalityRegistry


class _CallOnLoad:
    """Pickles as "call `function(*args)` when loaded", the way a malicious checkpoint would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _attacks(sentinel):
    """Each payload would create `sentinel` if it ever ran."""
    return {
        "os.system": _CallOnLoad(os.system, f"touch {sentinel}"),
        "builtins.eval": _CallOnLoad(builtins.eval, f"open({str(sentinel)!r}, 'w')"),
        "subprocess.Popen": _CallOnLoad(subprocess.Popen, ["touch", str(sentinel)]),
        "builtins.open": _CallOnLoad(builtins.open, str(sentinel), "w"),
    }


def _qualified_name(function) -> str:
    # what pickle writes for the global (os.system is written as posix.system on Linux)
    return f"{function.__module__}.{function.__qualname__}"


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "subprocess.Popen", "builtins.open"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, container, attack):
    sentinel = tmp_path / "pwned"
    payload = _attacks(sentinel)[attack]
    checkpoint = {"model": {}, "model_args": {"n_layer": 1}, "x": payload}
    path = tmp_path / "ckpt.pt"
    if container == "torch_zip":
        checkpoint["model"]["transformer.wpe.weight"] = torch.zeros(2, 2)
        torch.save(checkpoint, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(checkpoint, handle, protocol=2)

    with pytest.raises(UnsafeCheckpointError) as error:
        load_upstream_checkpoint(path)

    assert not sentinel.exists(), "the payload ran"
    message = str(error.value)
    assert "refusing to load ckpt.pt" in message
    assert _qualified_name(payload.function) in message


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_upstream_checkpoint(path)


def test_missing_file_and_non_dict_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_upstream_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="got a list"):
        load_upstream_checkpoint(path)


def test_v1_style_checkpoint_loads_with_weights_only(tmp_path):
    state = {"transformer.wpe.weight": torch.randn(4, 3), "_orig_mod.lm_head.0.bias": torch.randn(6)}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3))])
    checkpoint = {
        "model": state,
        "model_args": {"n_layer": 1, "n_head": 1, "n_embd": 3, "patch_size": 16},
        "config": {"spiral": True, "learning_rate": 1e-3},
        "optimizer": optimizer.state_dict(),
        "iter_num": 7,
        "best_val_loss": torch.tensor(0.25),
    }
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    loaded = load_upstream_checkpoint(path)
    assert loaded["iter_num"] == 7
    torch.testing.assert_close(loaded["model"]["transformer.wpe.weight"], state["transformer.wpe.weight"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_v2_registry_is_rebuilt_as_plain_stand_ins(tmp_path, monkeypatch, upstream_modality_classes):
    ModalityConfig, ModalityRegistry = upstream_modality_classes()
    images = ModalityConfig(name="images", input_size=768, pos_input_size=1, patch_size=16, embed_pos=True)
    checkpoint = {
        "model": {"transformer.wpe.images.wpe.weight": torch.randn(4, 3)},
        "model_args": {"n_layer": 1, "modalities": [images], "tokeniser": "aim"},
        "modality_registry": ModalityRegistry([images]),
        "iter_num": 1,
    }
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "astropt.model", raising=False)  # loading must not need upstream code

    loaded = load_upstream_checkpoint(path)

    assert "astropt.model" not in sys.modules
    registry = loaded["modality_registry"]
    assert isinstance(registry, UpstreamModalityRegistry)
    assert registry.names() == ["images"]
    config = registry.modalities["images"]
    assert isinstance(config, UpstreamModalityConfig)
    assert (config.patch_size, config.input_size, config.embed_pos) == (16, 768, True)
    assert isinstance(loaded["model_args"]["modalities"][0], UpstreamModalityConfig)

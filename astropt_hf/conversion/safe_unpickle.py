"""Load an upstream astroPT `ckpt.pt` without ever running code from the file.

Upstream checkpoints are pickles (usually in torch's zip format). Unpickling an untrusted pickle can run
arbitrary code, because a pickle may name any importable callable (`os.system`, `builtins.eval`, ...)
and ask for it to be called. We therefore:

1. try `torch.load(weights_only=True)`, torch's own hardened unpickler; this is enough for v1 files;
2. if that refuses the file (v2 and later pickle upstream config classes), load it again through a
   restricted unpickler whose `find_class` admits only tensor/storage rebuild functions, plain
   containers and scalars, numpy scalar reconstruction, and the known upstream config classes, which
   are rebuilt as our own plain-data stand-ins (upstream code is never imported).

Any other global makes `find_class` raise before anything is called, so nothing from the file runs,
and the error names what the pickle asked for.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from .upstream_classes import UPSTREAM_CLASS_STAND_INS


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle asked for something other than tensors, plain data or known config classes."""


# Globals a checkpoint may name, as (module, name). Each is a constructor of plain data or a torch tensor
# rebuild helper whose arguments are themselves restricted by this same list.
_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.storage", "UntypedStorage"),
    ("torch.nn.parameter", "Parameter"),
}
_TORCH_DTYPE_NAMES = {
    name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)
}
_PLAIN_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    # protocol-2 pickles write bytes as `_codecs.encode(text, "latin1")`
    ("_codecs", "encode"): None,
}
# numpy values (e.g. a float64 best_val_loss or an array in the training config)
_NUMPY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_NUMPY_DTYPE_CLASS_MODULES = {"numpy.dtypes"}


def _resolve_allowed_global(module: str, name: str) -> Any | None:
    """The object for an allowed (module, name), or None when the pair is not allowed."""
    if (module, name) in UPSTREAM_CLASS_STAND_INS:
        return UPSTREAM_CLASS_STAND_INS[(module, name)]
    if (module, name) in _PLAIN_GLOBALS:
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        return _PLAIN_GLOBALS[(module, name)]
    if module == "torch" and name in _TORCH_DTYPE_NAMES:
        return getattr(torch, name)
    if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
        return getattr(torch, name)
    if (module, name) in _TORCH_GLOBALS:
        return _import_attribute(module, name)
    if (module, name) in _NUMPY_GLOBALS:
        return _import_attribute(module, name)
    if module in _NUMPY_DTYPE_CLASS_MODULES and name.endswith("DType"):
        return _import_attribute(module, name)
    return None


def _import_attribute(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves allowlisted globals; everything else raises `UnsafeCheckpointError`.

    Raising in `find_class` happens before the pickle can call the object, so a refused file runs nothing.
    """

    source_name = "checkpoint"

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles may use Python 2 names (`__builtin__.set`); translate them as pickle would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        resolved = _resolve_allowed_global(module, name)
        if resolved is None:
            raise UnsafeCheckpointError(
                f"refusing to load {self.source_name}: its pickle asks for {module}.{name}, which is not a "
                "tensor, a plain container or scalar, or a known astroPT config class. Nothing from the file "
                "was run. Only load it with full unpickling if you trust where it came from."
            )
        return resolved


def _restricted_pickle_module(source_name: str) -> types.ModuleType:
    """A stand-in for the `pickle` module that torch.load uses for `Unpickler` and `load`."""

    class _NamedRestrictedUnpickler(RestrictedUnpickler):
        pass

    _NamedRestrictedUnpickler.source_name = source_name

    def load(file, **kwargs):
        return _NamedRestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs):
        return load(io.BytesIO(data), **kwargs)

    module = types.ModuleType("astropt_hf_restricted_pickle")
    module.Unpickler = _NamedRestrictedUnpickler
    module.load = load
    module.loads = loads
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _refuse_torchscript(path: Path) -> None:
    """TorchScript archives make torch.load hand over to torch.jit.load; a checkpoint never is one."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        if any(entry.endswith("constants.pkl") for entry in archive.namelist()):
            raise UnsafeCheckpointError(
                f"refusing to load {path.name}: it is a TorchScript archive (it has constants.pkl), not an "
                "astroPT training checkpoint"
            )


def load_upstream_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an upstream astroPT `ckpt.pt` safely and return its top-level dict.

    Tries `torch.load(weights_only=True)` first and falls back to the restricted unpickler (see the module
    docstring). Tensors are mapped to the CPU.

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeCheckpointError: the pickle asks for a global outside the allowlist (the message names it).
        ValueError: the file loads but is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint {path} does not exist")
    _refuse_torchscript(path)
    # Memory-map zip checkpoints: tensors we never touch (the optimizer state, twice the model's size for
    # AdamW) are then never read into RAM.
    mmap = zipfile.is_zipfile(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # torch's hardened unpickler refuses unknown globals; retry with our allowlist, which also knows
        # upstream's config classes and names the offending global if there is one.
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_restricted_pickle_module(path.name)
        )
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path}: expected an upstream astroPT checkpoint (a dict with 'model' and 'model_args'), "
            f"got a {type(checkpoint).__name__}"
        )
    return checkpoint

"""Load an upstream astroPT `ckpt.pt` without ever running code from the file.

Upstream checkpoints are pickles (usually in torch's zip format). Unpickling an untrusted pickle can run
arbitrary code, because a pickle may name any importable callable (`os.system`, `builtins.eval`, ...)
and ask for it to be called. We therefore load every file through a restricted unpickler whose
`find_class` admits only tensor/storage rebuild functions, plain containers and scalars, numpy scalar
reconstruction, and the known upstream config classes (v2 and later pickle them), which are rebuilt as
our own plain-data stand-ins (upstream code is never imported). torch's own `weights_only=True` loader is
not used: it refuses those config classes, and it builds whatever its allowlist admits at any size (a
100-byte pickle of `bytearray(8 GiB)` loads).

Any other global makes `find_class` raise before anything is called, so nothing from the file runs,
and the error names what the pickle asked for.

Memory is bounded too, because a pickle of a hundred bytes can ask for gigabytes: allowed constructors
that would allocate from a small argument (`range` of 10**8 items, `bytearray(8 GiB)`, a storage or
numpy array built directly) are replaced by checked versions or refused, a storage may not declare more
bytes than the file holds, and zip records are checked (in the file, sizes consistent) before torch reads
them. DEFLATE-compressed records, which torch's memory-mapped path misreads, are read without the memory
map (decompressed). Every file that cannot be read ends in `CorruptCheckpointError` (a `ValueError`)
whose one-line message names the file and what is wrong with it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import stat
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from .upstream_classes import UPSTREAM_CLASS_STAND_INS


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle asked for something other than tensors, plain data or known config classes."""


class CorruptCheckpointError(ValueError):
    """The file is not a readable checkpoint (empty, truncated, not a pickle or torch zip, inconsistent sizes)."""


# Most items a container built by a constructor call may get from an argument that is not itself stored in
# the file (a `range`); anything a pickle stores element by element is already bounded by the file size.
MAX_CONSTRUCTED_ITEMS = 2**20
# DEFLATE cannot expand data more than about 1032-fold; a record claiming more is lying about its size.
_MAX_DEFLATE_RATIO = 1100


class _AllocationRefused(UnsafeCheckpointError):
    """Raised by the checked constructors, which do not know the file; `load_upstream_checkpoint` names it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _refuse(what: str) -> _AllocationRefused:
    return _AllocationRefused(what)


def _bounded_range(*args):
    values = range(*args)
    if len(values) > MAX_CONSTRUCTED_ITEMS:
        raise _refuse(f"its pickle builds range{args} ({len(values):,} items, limit {MAX_CONSTRUCTED_ITEMS:,})")
    return values


def _bounded_bytearray(*args):
    if args and isinstance(args[0], int) and args[0] > MAX_CONSTRUCTED_ITEMS:
        raise _refuse(f"its pickle asks for bytearray({args[0]:,}) (limit {MAX_CONSTRUCTED_ITEMS:,} bytes)")
    return bytearray(*args)


def _text_encode(text, encoding="utf-8", errors="strict"):
    # protocol-2 pickles write bytes as `_codecs.encode(text, "latin1")`; no other codec is needed
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _refuse(f"its pickle calls _codecs.encode with {type(text).__name__} and {encoding!r}")
    import codecs

    return codecs.encode(text, encoding, errors)


class _NamedType:
    """A stand-in for a class the pickle may name but must not call: torch storage classes (named in tensor
    records, never constructed by the pickle itself) and `numpy.ndarray` (the subtype of `_reconstruct`)."""

    def __init__(self, qualified_name: str, real: Any):
        self.qualified_name, self.real = qualified_name, real
        dtype = getattr(real, "dtype", None)  # typed storage classes carry their dtype; untyped ones are bytes
        self.dtype = self._dtype = dtype if isinstance(dtype, torch.dtype) else torch.uint8

    def __call__(self, *args, **kwargs):
        raise _refuse(f"its pickle calls {self.qualified_name}(...) directly, which allocates memory")


def _bounded_numpy_reconstruct(reconstruct):
    def checked(subtype, shape, dtype):
        import numpy as np

        subtype = subtype.real if isinstance(subtype, _NamedType) else subtype
        if int(np.prod(shape, dtype=object)) > MAX_CONSTRUCTED_ITEMS:
            raise _refuse(f"its pickle builds a numpy array of shape {shape} directly")
        return reconstruct(subtype, shape, dtype)

    return checked


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
    ("torch.nn.parameter", "Parameter"),
}
_TORCH_DTYPE_NAMES = {
    name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)
}
_PLAIN_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # its items come from the file or from a bounded range
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bounded_bytearray,
    ("builtins", "slice"): slice,
    ("builtins", "range"): _bounded_range,
    ("_codecs", "encode"): _text_encode,
}
# numpy values (e.g. a float64 best_val_loss or an array in the training config)
_NUMPY_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_NUMPY_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NUMPY_DTYPE_CLASS_MODULES = {"numpy.dtypes"}


def _resolve_allowed_global(module: str, name: str) -> Any | None:
    """The object for an allowed (module, name), or None when the pair is not allowed."""
    if (module, name) in UPSTREAM_CLASS_STAND_INS:
        return UPSTREAM_CLASS_STAND_INS[(module, name)]
    if (module, name) in _PLAIN_GLOBALS:
        return _PLAIN_GLOBALS[(module, name)]
    if module == "torch" and name in _TORCH_DTYPE_NAMES:
        return getattr(torch, name)
    if module in ("torch", "torch.storage") and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
        return _NamedType(f"{module}.{name}", getattr(torch, name))
    if (module, name) == ("numpy", "ndarray"):
        import numpy as np

        return _NamedType("numpy.ndarray", np.ndarray)
    if (module, name) in _NUMPY_RECONSTRUCT:
        return _bounded_numpy_reconstruct(_import_attribute(module, name))
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
    #: Most bytes one storage may declare (set to the file's size when loading).
    max_storage_bytes = 0

    @property
    def persistent_load(self):
        return pickle.Unpickler.persistent_load.__get__(self)

    @persistent_load.setter
    def persistent_load(self, function):
        # torch installs its storage loader here; check each storage's declared size before it allocates.
        def checked(saved_id):
            _check_storage_record(saved_id, self.max_storage_bytes)
            return function(saved_id)

        pickle.Unpickler.persistent_load.__set__(self, checked)

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


def _check_storage_record(saved_id: Any, max_bytes: int) -> None:
    """Refuse a tensor storage record (torch's persistent id) that is malformed or declares more bytes than
    the file could hold: torch would allocate the declared size before reading any data."""
    if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] not in ("storage", b"storage"):
        raise _refuse(f"its pickle holds a persistent id {str(saved_id)[:80]} that is not a tensor storage record")
    if len(saved_id) not in (5, 6):
        raise _refuse(f"its tensor storage record has {len(saved_id)} fields, not 5 or 6")
    storage_type, numel = saved_id[1], saved_id[4]
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype) or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise _refuse(f"its tensor storage record {str(saved_id)[:80]} has no storage type or element count")
    nbytes = numel * torch._utils._element_size(dtype)
    if nbytes > max_bytes:
        raise _refuse(f"a tensor storage declares {nbytes:,} bytes, more than the file's {max_bytes:,}")


def _restricted_pickle_module(source_name: str, max_storage_bytes: int) -> types.ModuleType:
    """A stand-in for the `pickle` module that torch.load uses for `Unpickler` and `load`."""

    class _NamedRestrictedUnpickler(RestrictedUnpickler):
        pass

    _NamedRestrictedUnpickler.source_name = source_name
    _NamedRestrictedUnpickler.max_storage_bytes = max_storage_bytes

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


def _check_regular_file(path: Path) -> int:
    """The file's size; `FileNotFoundError` if it is missing, `CorruptCheckpointError` if it is not a file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"upstream checkpoint {path} does not exist") from None
    except OSError as err:
        raise CorruptCheckpointError(f"{path}: cannot read it ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise CorruptCheckpointError(f"{path} is a directory, not a checkpoint file (give the ckpt.pt inside it)")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise CorruptCheckpointError(f"{path} is {kind}, not a regular checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path.name} is empty (0 bytes), not a checkpoint")
    if not os.access(path, os.R_OK):
        raise CorruptCheckpointError(f"{path}: no permission to read it")
    return size


def _inspect_zip(path: Path, file_size: int) -> bool:
    """Check a torch zip checkpoint's records before torch reads them; True when all are stored uncompressed
    (so the file can be memory-mapped)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CorruptCheckpointError(f"{path.name}: damaged zip archive ({err})") from None
    names = [record.filename for record in records]
    if any(name.endswith("constants.pkl") for name in names):
        raise UnsafeCheckpointError(
            f"refusing to load {path.name}: it is a TorchScript archive (it has constants.pkl), not an "
            "astroPT training checkpoint"
        )
    if not any(name.endswith("data.pkl") for name in names):
        raise CorruptCheckpointError(f"{path.name}: a zip archive without data.pkl, not a torch checkpoint")
    stored = True
    for record in records:
        if record.compress_type == zipfile.ZIP_STORED:
            if record.file_size != record.compress_size or record.header_offset + record.file_size > file_size:
                raise CorruptCheckpointError(f"{path.name}: zip record {record.filename} lies about its size")
        elif record.compress_type == zipfile.ZIP_DEFLATED:
            stored = False
            if record.file_size > _MAX_DEFLATE_RATIO * max(record.compress_size, 1):
                raise CorruptCheckpointError(
                    f"{path.name}: compressed zip record {record.filename} claims {record.file_size:,} bytes from "
                    f"{record.compress_size:,}, more than DEFLATE can expand"
                )
        else:
            raise CorruptCheckpointError(
                f"{path.name}: zip record {record.filename} uses compression method {record.compress_type}; "
                "torch reads only stored or DEFLATE records (re-save it with torch.save)"
            )
    return stored


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


# What torch and pickle raise on damaged files: truncated pickles, garbage, bad persistent ids, zip errors.
_LOAD_ERRORS = (
    pickle.UnpicklingError, EOFError, RuntimeError, OSError, AssertionError, ValueError, TypeError, KeyError,
    IndexError, AttributeError, ImportError, MemoryError, OverflowError, UnicodeDecodeError, zipfile.BadZipFile,
)  # fmt: skip


def load_upstream_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an upstream astroPT `ckpt.pt` safely and return its top-level dict.

    Reads the file through `torch.load` with the restricted unpickler (see the module docstring), which also
    checks each storage's declared size. Tensors are mapped to the CPU.

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeCheckpointError: the pickle asks for a global outside the allowlist (the message names it), or
            for an allocation the file does not justify.
        CorruptCheckpointError: (a `ValueError`) the path is a directory, FIFO or empty, or the file is
            truncated, garbage or inconsistent; the one-line message names the file and the problem.
        ValueError: the file loads but is not a dict.
    """
    path = Path(path)
    file_size = _check_regular_file(path)
    is_zip = zipfile.is_zipfile(path)
    # Memory-map zip checkpoints: tensors we never touch (the optimizer state, twice the model's size for
    # AdamW) are then never read into RAM. Compressed records cannot be mapped: torch then decompresses.
    mmap = _inspect_zip(path, file_size) if is_zip else False
    restricted = _restricted_pickle_module(path.name, file_size)
    try:
        checkpoint = _torch_load(path, is_zip, mmap, restricted)
    except _AllocationRefused as err:
        raise UnsafeCheckpointError(f"refusing to load {path.name}: {err.what}. Nothing from the file was run.") from None
    except UnsafeCheckpointError:
        raise
    except _LOAD_ERRORS as err:
        raise CorruptCheckpointError(f"{path.name}: not a readable checkpoint ({_first_line(err)})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path}: expected an upstream astroPT checkpoint (a dict with 'model' and 'model_args'), "
            f"got a {type(checkpoint).__name__}"
        )
    return checkpoint


def _torch_load(path: Path, is_zip: bool, mmap: bool, restricted: types.ModuleType) -> Any:
    if not is_zip:
        # Old-style and plain pickles: read from memory, so that a length field in the pickle cannot make
        # a file read allocate more than the file holds.
        data = io.BytesIO(path.read_bytes())
        return torch.load(data, map_location="cpu", weights_only=False, pickle_module=restricted)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=restricted)
    except RuntimeError:
        if not mmap:
            raise
        # A storage whose declared size does not match its record fails obscurely when memory-mapped; the
        # plain read checks the size first and says so (and reads a valid file all the same).
        return _torch_load(path, is_zip, False, restricted)

"""Hostile and malformed checkpoints: refused before allocating, read correctly when merely compressed,
and every malformed file ends the converter's CLI in one line naming the file, with exit code 1."""

import collections
import io
import os
import pickle
import tarfile
import zipfile

import pytest
import torch
from downstream_helpers import load_script
from test_conversion_formats import upstream_checkpoint

from astropt_hf.conversion import UnsafeCheckpointError, convert_upstream_checkpoint, load_upstream_checkpoint
from astropt_hf.conversion.safe_unpickle import CorruptCheckpointError


class _Call:
    """Pickles as `function(*args)`: the way a crafted file asks for a constructor call."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class _Storage:
    def __init__(self, key, numel, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class _Tensor:
    def __init__(self, storage, size, stride):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        args = (self.storage, 0, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
        return torch._utils._rebuild_tensor_v2, args


class _TorchPickler(pickle.Pickler):
    """Writes storages as torch's persistent ids, so a test can declare any size for any record."""

    def __init__(self, file, legacy=False):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            record = ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
            return (*record, None) if self.legacy else record
        if isinstance(obj, _PersistentId):
            return obj.value
        return None


class _PersistentId:
    def __init__(self, value):
        self.value = value


def _torch_zip(path, obj, records):
    buffer = io.BytesIO()
    _TorchPickler(buffer).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")


def _legacy_file(path, obj, keys=("0",), storage_bytes=b""):
    """torch's pre-zip format: magic number, protocol, system info, the pickle, its storage keys, the data."""
    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _TorchPickler(buffer, legacy=True).dump(obj)
    pickle.dump(list(keys), buffer, protocol=2)
    path.write_bytes(buffer.getvalue() + storage_bytes)


def _plain_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


# ------------------------------------------------------------------------------------------ allocations


@pytest.mark.parametrize(
    "payload, message",
    [
        (_Call(set, _Call(range, 10**8)), "range"),
        (_Call(frozenset, _Call(range, 0, 10**9, 1)), "range"),
        (_Call(bytearray, 8 * 2**30), "bytearray"),
        (_Call(torch.FloatStorage, 2**38), "FloatStorage"),
    ],
    ids=["set-range", "frozenset-range", "bytearray-8GiB", "storage-constructor"],
)
@pytest.mark.parametrize("container", ["plain_pickle", "torch_zip"])
def test_tiny_pickles_that_allocate_gigabytes_are_refused(tmp_path, payload, message, container):
    path = tmp_path / "ckpt.pt"
    checkpoint = {"model": {}, "x": payload}
    if container == "plain_pickle":
        _plain_pickle(path, checkpoint)
        assert path.stat().st_size < 200
    else:
        _torch_zip(path, checkpoint, {})
    if container == "torch_zip" and message == "FloatStorage":
        # inside a zip, torch itself swaps storage classes for non-callable names before our unpickler
        message = "StorageType' object is not callable"
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError), match=f"ckpt.pt: .*{message}"):
        load_upstream_checkpoint(path)


def test_legacy_storage_declaring_a_tebibyte_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    _legacy_file(path, {"model": {"w": _Tensor(_Storage("0", 2**38), (2**19, 2**19), (2**19, 1))}})
    assert path.stat().st_size < 1024
    with pytest.raises(UnsafeCheckpointError, match="declares 1,099,511,627,776 bytes, more than the file's"):
        load_upstream_checkpoint(path)


def test_zip_storage_larger_than_its_record_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    _torch_zip(path, {"model": {"w": _Tensor(_Storage("0", 2**38), (2**19, 2**19), (2**19, 1))}}, {"0": b"\0" * 64})
    with pytest.raises(UnsafeCheckpointError, match="ckpt.pt: a tensor storage declares 1,099,511,627,776 bytes"):
        load_upstream_checkpoint(path)


def test_stride_zero_checkpoint_does_not_build_a_huge_model(tmp_path):
    checkpoint = upstream_checkpoint("v1")
    width = 4096  # expanded views of one value each: a few KB on disk, gigabytes once materialised
    checkpoint["model"] = {
        key: torch.zeros(1).expand(*[width * 4 if n == 64 else width for n in value.shape])
        for key, value in checkpoint["model"].items()
    }
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(ValueError, match="ckpt.pt: weight .* is a stride-0 or overlapping view"):
        convert_upstream_checkpoint(path, None, parity_check=False)


def test_numpy_array_built_directly_is_refused_but_ordinary_values_load(tmp_path):
    import numpy as np

    path = tmp_path / "ckpt.pt"
    _plain_pickle(path, {"model": {}, "x": _Call(np.ndarray, (2**33,))})
    with pytest.raises(UnsafeCheckpointError, match="numpy.ndarray"):
        load_upstream_checkpoint(path)
    # numpy values, bytes and small sets pickled the ordinary way still load, in both torch formats
    values = {"x": np.arange(5.0), "loss": np.float64(0.25), "raw": bytearray(b"ab"), "ids": set(range(3))}
    weight = torch.randn(3, 4)
    for zip_format in (True, False):
        torch.save({"model": {"w": weight, "row": weight[1]}, **values}, path, _use_new_zipfile_serialization=zip_format)
        loaded = load_upstream_checkpoint(path)
        assert torch.equal(loaded["model"]["w"], weight) and torch.equal(loaded["model"]["row"], weight[1])
        np.testing.assert_array_equal(loaded["x"], values["x"])
        assert (loaded["loss"], loaded["raw"], loaded["ids"]) == (0.25, b"ab", {0, 1, 2})


# ------------------------------------------------------------------------------------------ compressed zips


def _recompress(source, target, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", method) as rewritten:
        for record in original.infolist():
            rewritten.writestr(record.filename, original.read(record.filename))


def test_deflate_compressed_checkpoint_is_read_correctly(tmp_path):
    weights = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    torch.save({"model": weights, "iter_num": 3}, tmp_path / "stored.pt")
    _recompress(tmp_path / "stored.pt", tmp_path / "ckpt.pt")
    loaded = load_upstream_checkpoint(tmp_path / "ckpt.pt")
    for key, value in weights.items():
        torch.testing.assert_close(loaded["model"][key], value, rtol=0, atol=0)


def test_deflate_compressed_upstream_checkpoint_converts_with_parity(tmp_path):
    torch.save(upstream_checkpoint("v1"), tmp_path / "stored.pt")
    _recompress(tmp_path / "stored.pt", tmp_path / "ckpt.pt")
    stored = convert_upstream_checkpoint(tmp_path / "stored.pt", None)
    compressed = convert_upstream_checkpoint(tmp_path / "ckpt.pt", None)
    assert compressed.parity_passed and compressed.num_parameters == stored.num_parameters


# ------------------------------------------------------------------------------------------ the CLI


def _malformed_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(upstream_checkpoint("v1"), good)
    data = good.read_bytes()
    files = {
        "empty.pt": b"",
        "truncated.pt": data[: len(data) // 2],
        "garbage.pt": os.urandom(2048),
        "text.pt": b"not a checkpoint\n" * 20,
        "zip-no-pickle.pt": None,
        "tar.pt": None,
        "persistent-id.pt": None,
        "short-pickle.pt": pickle.dumps({"model": {}})[:-3],
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "zip-no-pickle.pt", "w") as archive:
        archive.writestr("archive/version", "3\n")
    with tarfile.open(tmp_path / "tar.pt", "w") as archive:
        archive.add(good, arcname="storages")
    _torch_zip(tmp_path / "persistent-id.pt", {"model": _PersistentId(("module", "os", "system"))}, {})
    return [tmp_path / name for name in files]


def test_malformed_files_end_in_one_line_naming_the_file(tmp_path, capsys):
    script = load_script("convert_astropt_checkpoint")
    for path in _malformed_files(tmp_path):
        code = script.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 1, path.name
        assert len(err.splitlines()) == 1 and err.startswith("error: "), f"{path.name}: {err}"
        assert path.name in err, err
    assert not (tmp_path / "out").exists()


def test_directory_and_fifo_are_reported_as_such(tmp_path, capsys):
    script = load_script("convert_astropt_checkpoint")
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "is a directory"), (fifo, "is a FIFO")):
        assert script.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and kind in err and "does not exist" not in err
    assert script.main(["--checkpoint", str(tmp_path / "missing.pt"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err

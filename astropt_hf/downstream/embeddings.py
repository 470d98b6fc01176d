"""Image embeddings at catalogue scale: batched, optionally bf16, multi-process, resumable Parquet.

Two entry points:

* `compute_embeddings` returns an (N, D) array in memory (probes, baselines, small sets);
* `extract_embeddings` writes a Parquet file with one row per galaxy (`id`, `row`, `embedding` and the
  catalogue's scalar columns carried along), and can be run under `accelerate launch` on many devices,
  on map-style datasets or streams.

Images are decoded and processed by the data layer (`astropt_hf.data.GalaxyCollator`); an image it
cannot read is skipped and counted, never written.

How resumability works. Each process writes its rows in chunks; a chunk becomes a small Parquet file
in ``OUTPUT.parts/`` only once it is complete (written to a temporary name, then renamed), so a killed
run leaves whole chunks and nothing half-written. A rerun reads the ids of every chunk (and of a
previous final file), skips those rows and embeds the rest. At the end the main process streams all
chunks into the final file, one row group per chunk, dropping any duplicated id, then deletes the
parts folder. The file's metadata records the model and embedding settings, so a rerun with other
settings is refused instead of mixing two kinds of embeddings in one file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import is_streaming_dataset
from ..run_files import atomic_path, remove_stale_temporaries

logger = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
ROW_COLUMN = "row"
METADATA_KEY = b"astropt_hf.embeddings"  # the Parquet format key: unchanged so older files still read
PARTS_SUFFIX = ".parts"

__all__ = [
    "EmbeddingCollator",
    "EmbeddingTable",
    "ExtractionSummary",
    "compute_embeddings",
    "embed_pixel_batch",
    "extract_embeddings",
    "load_backbone",
    "pixel_batches",
    "read_embeddings",
]


# --------------------------------------------------------------------------- model


def load_backbone(
    model_name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    trust_remote_code: bool = True,
):
    """Load an astroPT backbone and its image processor from a local folder or a hub id.

    Any astroPT checkpoint works (pretraining, backbone or fine-tuned classifier): only the
    backbone's weights are used. Returns (model in eval mode on `device`, processor).
    """
    from transformers import AutoImageProcessor, AutoModel

    import astropt_hf  # noqa: F401  (registers the Auto classes for local folders)

    model = AutoModel.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
    processor = AutoImageProcessor.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    return model.eval(), processor


def _backbone(model):
    """The `AstroPTModel` inside any astroPT head (or the model itself)."""
    if hasattr(model, "get_image_embeddings"):
        return model
    inner = getattr(model, "astropt", None)
    if inner is not None and hasattr(inner, "get_image_embeddings"):
        return inner
    raise TypeError(f"{type(model).__name__} is not an astroPT model: it has no get_image_embeddings")


@torch.no_grad()
def embed_pixel_batch(
    model,
    pixel_values: torch.Tensor,
    layer: str | int | None = None,
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """(B, C, H, W) pixel values -> (B, D) float32 numpy embeddings.

    `layer`, `pooling`, `pooling_num_patches` default to the model config's choices; `bf16` runs the
    backbone under bfloat16 autocast on the model's device (embeddings are returned as float32).
    """
    backbone = _backbone(model)
    device = next(backbone.parameters()).device
    pixel_values = pixel_values.to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        embeddings = backbone.get_image_embeddings(
            pixel_values, layer=layer, pooling=pooling, pooling_num_patches=pooling_num_patches
        )
    return embeddings.float().cpu().numpy()


# --------------------------------------------------------------------------- data

ID_KEY = "__astropt_id__"  # the row's id as a string, added to each example
ROW_KEY = "__astropt_row__"  # the row's position in the dataset


class _Rows:
    """Map-style rows `indices` of a dataset as a torch dataset of example dicts, fetched a batch at a time.

    Each example gains its id (as a string; the row number when the dataset has no id column) and its
    row number, so batches can be matched back to rows even when the collator skips a bad image.
    """

    def __init__(self, dataset, indices: Sequence[int], id_column: str | None):
        self.dataset = dataset
        self.indices = list(indices)
        self.id_column = id_column

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[dict]:
        rows = [self.indices[p] for p in positions]
        columns = self.dataset[rows]
        examples = [{name: values[i] for name, values in columns.items()} for i in range(len(rows))]
        for example, row in zip(examples, rows):
            example[ID_KEY] = str(example[self.id_column]) if self.id_column else str(row)
            example[ROW_KEY] = row
        return examples


class _StreamRows:
    """Gives each streamed example its id and stream position (picklable for DataLoader workers)."""

    def __init__(self, id_column: str | None):
        self.id_column = id_column

    def __call__(self, example: dict, index: int) -> dict:
        example[ID_KEY] = str(example[self.id_column]) if self.id_column else str(index)
        example[ROW_KEY] = index
        return example


class _NotDone:
    def __init__(self, done: set[str]):
        self.done = done

    def __call__(self, example: dict) -> bool:
        return example[ID_KEY] not in self.done


class EmbeddingCollator:
    """Rows -> {"pixel_values", "ids", "rows", "columns", "num_skipped"} through `GalaxyCollator`.

    Images the data layer cannot decode or process are skipped (and counted); `ids`, `rows` and the
    carried catalogue `columns` (raw values, name -> list) describe only the kept images, in order.
    """

    def __init__(self, processor, image_column: str = "image", carry_columns: Sequence[str] = ()):
        from astropt_hf.data import GalaxyCollator

        self.images = GalaxyCollator(processor, image_column=image_column, id_column=ID_KEY)
        self.carry_columns = list(carry_columns)

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        batch = self.images(examples)
        by_id = {example[ID_KEY]: example for example in examples}
        kept = [by_id[row_id] for row_id in batch["ids"]]
        return {
            "pixel_values": batch["pixel_values"],
            "ids": list(batch["ids"]),
            "rows": [example[ROW_KEY] for example in kept],
            "columns": {name: [example[name] for example in kept] for name in self.carry_columns},
            "num_skipped": batch["num_skipped"],
        }


def pixel_batches(
    dataset,
    processor,
    image_column: str,
    id_column: str | None,
    batch_size: int,
    num_workers: int,
    indices: Sequence[int] | None = None,
    carry_columns: Sequence[str] = (),
    done: set[str] | None = None,
    rank: int = 0,
    world: int = 1,
):
    """DataLoader of `EmbeddingCollator` batches.

    Map-style datasets read the given `indices` (default: all rows). Streaming datasets are split
    between processes with `split_dataset_by_node` and rows whose id is in `done` are dropped before
    any image is decoded.
    """
    from torch.utils.data import DataLoader

    collate = EmbeddingCollator(processor, image_column, carry_columns)
    if is_streaming_dataset(dataset):
        from datasets.distributed import split_dataset_by_node

        stream = dataset.map(_StreamRows(id_column), with_indices=True)
        if done:
            stream = stream.filter(_NotDone(done))
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        return DataLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    rows = _Rows(dataset, range(len(dataset)) if indices is None else indices, id_column)
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


def _dataset_length(dataset) -> int | None:
    return None if is_streaming_dataset(dataset) else len(dataset)


def compute_embeddings(
    model,
    dataset,
    processor,
    batch_size: int = 64,
    layer: str | int | None = None,
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
    image_column: str = "image",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Embed every row of a map-style `datasets.Dataset`, in order; returns (N, D) float32.

    A row whose image cannot be decoded or processed is logged by the data layer and gets a row of
    NaN, so the result stays aligned with the dataset (drop those rows before probing).
    """
    from tqdm.auto import tqdm

    if is_streaming_dataset(dataset):
        raise ValueError("compute_embeddings needs a map-style dataset; use extract_embeddings for streams")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to embed")
    width = _backbone(model).config.hidden_size
    result = np.full((len(dataset), width), np.nan, dtype=np.float32)
    loader = pixel_batches(dataset, processor, image_column, None, batch_size, num_workers)
    with tqdm(total=len(dataset), unit="gal", desc="embedding", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            if batch["rows"]:
                result[batch["rows"]] = embed_pixel_batch(
                    model, batch["pixel_values"], layer, pooling, pooling_num_patches, bf16
                )
            bar.update(len(batch["rows"]) + batch["num_skipped"])
    skipped = int(np.isnan(result[:, 0]).sum())
    if skipped:
        logger.warning("compute_embeddings: %d of %d rows could not be embedded (NaN rows)", skipped, len(dataset))
    return result


# --------------------------------------------------------------------------- parquet I/O


@dataclass
class EmbeddingTable:
    """Embeddings read back from Parquet: `ids` (N,), `embeddings` (N, D) float32, the carried
    catalogue `columns` (name -> (N,) array, including `row`) and the writer's `metadata`."""

    ids: np.ndarray
    embeddings: np.ndarray
    columns: dict[str, np.ndarray]
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def _embedding_matrix(column, path: Path) -> np.ndarray:
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"{path}: column {EMBEDDING_COLUMN!r} has type {column.type}; expected fixed_size_list<float>")
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


def read_embeddings(path: str | os.PathLike, columns: Sequence[str] | None = None) -> EmbeddingTable:
    """Read an embeddings Parquet file written by `extract_embeddings`.

    `columns` limits which carried catalogue columns are loaded (id and embedding always are).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    schema = pq.read_schema(path)
    for required in ("id", EMBEDDING_COLUMN):
        if required not in schema.names:
            raise ValueError(f"{path}: no {required!r} column (columns: {schema.names}); not an embeddings file")
    wanted = None if columns is None else ["id", EMBEDDING_COLUMN, *[c for c in columns if c not in ("id", EMBEDDING_COLUMN)]]
    table = pq.read_table(path, columns=wanted)
    metadata = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
    carried = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in table.column_names
        if name not in ("id", EMBEDDING_COLUMN)
    }
    return EmbeddingTable(
        ids=table.column("id").to_numpy(zero_copy_only=False),
        embeddings=_embedding_matrix(table.column(EMBEDDING_COLUMN), path),
        columns=carried,
        metadata=metadata,
    )


def _read_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def _read_metadata(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))


def _write_parquet_atomic(table, path: Path, row_group_size: int | None = None) -> None:
    """Write a table to `path` so that the file appears complete or not at all."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractionSummary:
    """What `extract_embeddings` did (on the main process the numbers cover every process)."""

    output: Path
    num_rows: int
    num_new: int
    num_skipped: int
    num_unreadable: int
    embedding_dim: int
    seconds: float
    num_processes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def galaxies_per_second(self) -> float:
        return self.num_new / self.seconds if self.seconds > 0 else 0.0

    def throughput_line(self) -> str:
        return (
            f"Embedded {self.num_new} new galaxies in {self.seconds:.1f} s "
            f"({self.galaxies_per_second:.1f} galaxies/s on {self.num_processes} process(es)); "
            f"skipped {self.num_skipped} already written"
            + (f", {self.num_unreadable} unreadable" if self.num_unreadable else "")
            + f"; {self.num_rows} rows in {self.output}"
        )


def _scalar_columns(dataset, exclude: Iterable[str]) -> list[str]:
    """Columns of scalar type (numbers, strings, booleans, labels): the catalogue to carry along."""
    from datasets import ClassLabel, Value

    excluded = set(exclude)
    return [
        name
        for name, feature in (dataset.features or {}).items()
        if name not in excluded and isinstance(feature, (Value, ClassLabel))
    ]


def _row_ids(dataset, id_column: str | None) -> list[str]:
    if id_column is None:
        return [str(i) for i in range(len(dataset))]
    ids = [str(v) for v in dataset[id_column]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset column {id_column!r} holds duplicate ids; resumable extraction needs unique ids")
    return ids


def _arrow_types(dataset, columns: Sequence[str]) -> dict[str, Any]:
    """Arrow type of each carried column as the dataset declares it (float32 stays float32)."""
    schema = dataset.features.arrow_schema if dataset.features is not None else None
    return {name: schema.field(name).type if schema is not None and name in schema.names else None for name in columns}


def _chunk_table(ids, rows, embeddings: np.ndarray, carried: dict[str, list], types: dict, metadata: dict[str, Any]):
    import pyarrow as pa

    width = embeddings.shape[1]
    flat = pa.array(embeddings.astype(np.float32, copy=False).reshape(-1))
    columns = {
        "id": pa.array(ids, type=pa.string()),
        ROW_COLUMN: pa.array(rows, type=pa.int64()),
        EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(flat, width),
    }
    columns.update({name: pa.array(values, type=types.get(name)) for name, values in carried.items()})
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def _settings_clash(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = ("model", "layer", "pooling", "pooling_num_patches", "embedding_dim")
    return [f"{k}: file has {old.get(k)!r}, this run {new.get(k)!r}" for k in keys if k in old and old.get(k) != new.get(k)]


def _done_ids(output: Path, parts_dir: Path, metadata: dict[str, Any]) -> set[str]:
    """Ids already embedded (final file and complete chunks), after checking they match this run."""
    sources = ([output] if output.is_file() else []) + sorted(parts_dir.glob("*.parquet"))
    done: set[str] = set()
    for source in sources:
        clash = _settings_clash(_read_metadata(source), metadata)
        if clash:
            raise ValueError(
                f"{source} holds embeddings made with other settings ({'; '.join(clash)}); "
                "write to another --output or pass --overwrite"
            )
        done.update(_read_ids(source))
    return done


def _first_row(path: Path) -> int:
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=[ROW_COLUMN]).column(0)
    return rows[0].as_py() if len(rows) else -1


def _merge(output: Path, parts_dir: Path, row_group_size: int) -> int:
    """Stream the previous final file and every chunk into `output`, each id once; returns the row count.

    Chunks are written in the order of their first dataset row, one row group per chunk.
    """
    import pyarrow.parquet as pq

    chunks = sorted(parts_dir.glob("*.parquet"), key=lambda p: (_first_row(p), p.name))
    sources = ([output] if output.is_file() else []) + chunks
    schema = pq.read_schema(chunks[-1] if chunks else output)
    seen: set[str] = set()
    with atomic_path(output) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for source in sources:
                source_file = pq.ParquetFile(source)
                if not source_file.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
                    raise ValueError(
                        f"{source} has columns {source_file.schema_arrow} unlike the new chunks' {schema}; "
                        "was the dataset changed between runs? write to another --output or pass --overwrite"
                    )
                for group in range(source_file.num_row_groups):
                    table = source_file.read_row_group(group)
                    ids = table.column("id").to_pylist()
                    keep = [i for i, row_id in enumerate(ids) if row_id not in seen]
                    seen.update(ids)
                    if keep:
                        table = table.take(keep) if len(keep) < len(ids) else table
                        writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=row_group_size)
    for chunk in chunks:
        chunk.unlink()
    if not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    return len(seen)


class _ChunkWriter:
    """Collects embedded rows and writes each full chunk as its own complete Parquet file."""

    def __init__(self, parts_dir: Path, rank: int, rows_per_chunk: int, types: dict, metadata: dict[str, Any]):
        self.parts_dir, self.rank, self.rows_per_chunk = parts_dir, rank, rows_per_chunk
        self.types, self.metadata = types, metadata
        self.tag = uuid.uuid4().hex[:6]  # a rerun never overwrites an earlier run's chunk
        self.count = 0
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.rows: list[int] = []
        self.embeddings: list[np.ndarray] = []
        self.columns: dict[str, list] = {name: [] for name in self.types}

    def add(self, batch: dict[str, Any], embeddings: np.ndarray) -> None:
        self.ids += batch["ids"]
        self.rows += batch["rows"]
        self.embeddings.append(embeddings)
        for name, values in batch["columns"].items():
            self.columns[name] += values
        if len(self.ids) >= self.rows_per_chunk:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        table = _chunk_table(
            self.ids, self.rows, np.concatenate(self.embeddings), self.columns, self.types, self.metadata
        )
        name = f"rank{self.rank:05d}-{self.tag}-{self.count:06d}.parquet"
        _write_parquet_atomic(table, self.parts_dir / name)
        self.count += 1
        self._reset()


def extract_embeddings(
    model,
    dataset,
    processor,
    output: str | os.PathLike,
    batch_size: int = 64,
    layer: str | int | None = None,
    pooling: str | None = None,
    pooling_num_patches: int | None = None,
    bf16: bool = False,
    image_column: str = "image",
    id_column: str | None = "id",
    carry_columns: Sequence[str] | None = None,
    rows_per_chunk: int = 4096,
    num_workers: int = 0,
    overwrite: bool = False,
    accelerator=None,
    model_name: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> ExtractionSummary:
    """Embed a dataset into a Parquet file, resumably, on one or many processes.

    Args:
        model: an astroPT model (any head) already on its device.
        dataset: a `datasets.Dataset` (or a streaming `IterableDataset`) with an image column;
            `id_column` (unique per row; None: the row number) and the scalar `carry_columns`
            (default: every scalar column) are copied into the output.
        output: the Parquet file to write. Rows whose id is already in it (or in its ``.parts`` folder
            from an interrupted run) are skipped.
        layer, pooling, pooling_num_patches: embedding choices (default: the model config's).
        bf16: bfloat16 autocast for the forward pass.
        rows_per_chunk: rows per chunk file and per row group of the final file; a killed run loses
            at most the chunk each process was filling.
        accelerator: an `accelerate.Accelerator` for multi-process runs; each process embeds a contiguous
            share of the remaining rows (streams: `split_dataset_by_node`) and the main process merges the
            chunks at the end.
        overwrite: delete a previous output and its chunks first.
        model_name, extra_metadata: recorded in the file's metadata (e.g. how to reopen the dataset).
    Returns:
        `ExtractionSummary` (its `throughput_line()` is what the CLI prints).
    """
    from tqdm.auto import tqdm

    output = Path(output)
    parts_dir = output.with_name(output.name + PARTS_SUFFIX)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    is_main = rank == 0

    def barrier() -> None:
        if accelerator is not None:
            accelerator.wait_for_everyone()

    config = _backbone(model).config
    metadata = {
        "model": str(model_name) if model_name is not None else getattr(config, "_name_or_path", ""),
        "layer": str(config.embedding_layer if layer is None else layer),
        "pooling": pooling or config.pooling,
        "pooling_num_patches": int(pooling_num_patches if pooling_num_patches is not None else config.pooling_num_patches),
        "embedding_dim": int(config.hidden_size),
        "bf16": bool(bf16),
        **(extra_metadata or {}),
    }
    columns = dataset.column_names or []
    if image_column not in columns:
        raise ValueError(f"dataset has no image column {image_column!r}; columns are {columns}")
    if id_column is not None and id_column not in columns:
        raise ValueError(
            f"dataset has no id column {id_column!r}; columns are {columns} (id_column=None numbers the rows)"
        )
    carry = list(carry_columns) if carry_columns is not None else _scalar_columns(
        dataset, exclude=(image_column, id_column or "", ROW_COLUMN, EMBEDDING_COLUMN)
    )
    missing = [c for c in carry if c not in columns or c in ("id", ROW_COLUMN, EMBEDDING_COLUMN)]
    if missing:
        raise ValueError(f"carry_columns {missing} are not carriable columns of the dataset {columns}")

    if is_main:
        output.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            output.unlink(missing_ok=True)
            for chunk in parts_dir.glob("*.parquet"):
                chunk.unlink()
        parts_dir.mkdir(exist_ok=True)
        for stale in parts_dir.glob(".*.tmp"):  # a chunk that was being written when a run was killed
            stale.unlink()
        remove_stale_temporaries(output)  # a merge that was being written when a run was killed
    barrier()
    done = _done_ids(output, parts_dir, metadata)
    # Every process must finish reading before any writes a new chunk, or their views would differ.
    barrier()

    streaming = is_streaming_dataset(dataset)
    if streaming:
        mine, total = None, None
        loader = pixel_batches(dataset, processor, image_column, id_column, batch_size, num_workers,
                          carry_columns=carry, done=done, rank=rank, world=world)  # fmt: skip
    else:
        ids = _row_ids(dataset, id_column)
        remaining = [i for i, row_id in enumerate(ids) if row_id not in done]
        # Contiguous shares: chunks sorted by first row then give the file in dataset order.
        share = -(-len(remaining) // world)
        mine = remaining[rank * share : (rank + 1) * share]
        total = len(mine)
        loader = pixel_batches(dataset, processor, image_column, id_column, batch_size, num_workers,
                          indices=mine, carry_columns=carry)  # fmt: skip

    writer = _ChunkWriter(parts_dir, rank, rows_per_chunk, _arrow_types(dataset, carry), metadata)
    embedded = unreadable = 0
    started = time.perf_counter()
    desc = "embedding" if world == 1 else f"embedding (rank 0 of {world})"
    with tqdm(total=total, unit="gal", desc=desc, disable=not (progress and is_main), smoothing=0.1) as bar:
        for batch in loader:
            unreadable += batch["num_skipped"]
            if batch["ids"]:
                writer.add(batch, embed_pixel_batch(model, batch["pixel_values"], layer, pooling, pooling_num_patches, bf16))
                embedded += len(batch["ids"])
            bar.update(len(batch["ids"]) + batch["num_skipped"])
        writer.flush()
    seconds = time.perf_counter() - started

    if accelerator is not None and world > 1:
        from accelerate.utils import gather_object

        counts = gather_object([(embedded, unreadable, seconds)])
        embedded = sum(c[0] for c in counts)
        unreadable = sum(c[1] for c in counts)
        seconds = max(c[2] for c in counts)
    barrier()
    num_rows = len(done)
    if is_main:
        if any(parts_dir.glob("*.parquet")):
            num_rows = _merge(output, parts_dir, rows_per_chunk)
        elif parts_dir.is_dir() and not any(parts_dir.iterdir()):
            parts_dir.rmdir()
    barrier()
    if unreadable:
        logger.warning("%d images could not be decoded or processed and were skipped (not written)", unreadable)
    return ExtractionSummary(
        output=output,
        num_rows=num_rows,
        num_new=embedded,
        num_skipped=len(done) if streaming else len(done.intersection(ids)),
        num_unreadable=unreadable,
        embedding_dim=int(config.hidden_size),
        seconds=seconds,
        num_processes=world,
        metadata=metadata,
    )

"""The resumable Parquet store of image embeddings: one row per galaxy (`id`, `row`, `embedding`, catalogue).

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
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf.run_files import atomic_path, remove_stale_temporaries

EMBEDDING_COLUMN = "embedding"
ROW_COLUMN = "row"
METADATA_KEY = b"astropt_hf.embeddings"  # the Parquet format key: unchanged so older files still read
PARTS_SUFFIX = ".parts"
# Settings that make two embeddings incomparable: a rerun that differs in one of them is refused.
SETTINGS_KEYS = ("model", "layer", "pooling", "pooling_num_patches", "embedding_dim", "inputs")

__all__ = [
    "EMBEDDING_COLUMN",
    "METADATA_KEY",
    "PARTS_SUFFIX",
    "ROW_COLUMN",
    "ChunkWriter",
    "EmbeddingStore",
    "EmbeddingTable",
    "read_embeddings",
]


# --------------------------------------------------------------------------- reading


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
    carried = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in table.column_names
        if name not in ("id", EMBEDDING_COLUMN)
    }
    return EmbeddingTable(
        ids=table.column("id").to_numpy(zero_copy_only=False),
        embeddings=_embedding_matrix(table.column(EMBEDDING_COLUMN), path),
        columns=carried,
        metadata=json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}")),
    )


def _read_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def _read_metadata(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))


def _first_row(path: Path) -> int:
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=[ROW_COLUMN]).column(0)
    return rows[0].as_py() if len(rows) else -1


# --------------------------------------------------------------------------- writing


def _write_parquet_atomic(table, path: Path, row_group_size: int | None = None) -> None:
    """Write a table to `path` so that the file appears complete or not at all."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


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


class ChunkWriter:
    """Collects embedded rows and writes each full chunk as its own complete Parquet file.

    `types` maps each carried catalogue column to its Arrow type (None: inferred from the values).
    """

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
        """Add an `EmbeddingCollator` batch's ids, rows and carried columns with their embeddings."""
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


def _settings_clash(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{k}: file has {old.get(k)!r}, this run {new.get(k)!r}"
        for k in SETTINGS_KEYS
        if k in old and old.get(k) != new.get(k)
    ]


class EmbeddingStore:
    """An embeddings file `output` and the ``OUTPUT.parts/`` folder of chunks written towards it."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.parts_dir = self.output.with_name(self.output.name + PARTS_SUFFIX)

    def prepare(self, overwrite: bool = False) -> None:
        """Create the parts folder (with `overwrite`, delete earlier output first). Main process only."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.output.unlink(missing_ok=True)
            for chunk in self.parts_dir.glob("*.parquet"):
                chunk.unlink()
        self.parts_dir.mkdir(exist_ok=True)
        for stale in self.parts_dir.glob(".*.tmp"):  # a chunk that was being written when a run was killed
            stale.unlink()
        remove_stale_temporaries(self.output)  # a merge that was killed before its rename

    def done_ids(self, metadata: dict[str, Any]) -> set[str]:
        """Ids already embedded (final file and complete chunks), after checking they match this run."""
        sources = ([self.output] if self.output.is_file() else []) + sorted(self.parts_dir.glob("*.parquet"))
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

    def chunk_writer(self, rank: int, rows_per_chunk: int, types: dict, metadata: dict[str, Any]) -> ChunkWriter:
        return ChunkWriter(self.parts_dir, rank, rows_per_chunk, types, metadata)

    def finish(self, row_group_size: int) -> int | None:
        """Merge the chunks into the final file; returns its row count, or None when there was nothing new.

        Main process only, after every process has flushed its chunks.
        """
        if any(self.parts_dir.glob("*.parquet")):
            return self._merge(row_group_size)
        if self.parts_dir.is_dir() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
        return None

    def _merge(self, row_group_size: int) -> int:
        """Stream the previous final file and every chunk into the output, each id once; returns the row count.

        Chunks are written in the order of their first dataset row, one row group per chunk.
        """
        import pyarrow.parquet as pq

        output, parts_dir = self.output, self.parts_dir
        chunks = sorted(parts_dir.glob("*.parquet"), key=lambda p: (_first_row(p), p.name))
        sources = ([output] if output.is_file() else []) + chunks
        schema = pq.read_schema(chunks[-1] if chunks else output)
        seen: set[str] = set()
        with atomic_path(output) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for source in sources:
                _copy_new_rows(pq.ParquetFile(source), source, schema, writer, seen, row_group_size)
        for chunk in chunks:
            chunk.unlink()
        if not any(parts_dir.iterdir()):
            parts_dir.rmdir()
        return len(seen)


def _copy_new_rows(source_file, source: Path, schema, writer, seen: set[str], row_group_size: int) -> None:
    """Append the rows of `source_file` whose id is not in `seen` (which gains them), a row group at a time."""
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

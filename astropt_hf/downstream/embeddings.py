"""Image embeddings at catalogue scale: batched, optionally bf16, multi-process, resumable Parquet.

Two entry points:

* `compute_embeddings` returns an (N, D) array in memory (probes, baselines, small sets);
* `extract_embeddings` writes a Parquet file with one row per galaxy (`id`, `row`, `embedding` and the
  catalogue's scalar columns carried along), and can be run under `accelerate launch` on many devices,
  on map-style datasets or streams.

Images are decoded and processed by the data layer (`astropt_hf.data.GalaxyCollator`); an image it
cannot read is skipped and counted, never written. A model with spectra can be embedded from its images,
its spectra or both (`inputs`); the spectra are prepared by the spectrum extractor saved with the model.

The file and its resumability (chunks, merge, settings checks) are `astropt_hf.downstream.embedding_store`;
the DataLoaders that keep rows matched to their ids are `astropt_hf.data.batching`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from astropt_hf.data import is_streaming_dataset
from astropt_hf.data.batching import SPECTRUM_KEYS, pixel_batches
from astropt_hf.downstream.embedding_store import (
    EMBEDDING_COLUMN,
    ROW_COLUMN,
    EmbeddingStore,
    EmbeddingTable,
    read_embeddings,
)
from astropt_hf.load_reports import plain_load_reports

logger = logging.getLogger(__name__)

# The store's read side (`read_embeddings`, `EmbeddingTable`) is re-exported: reading back what
# `extract_embeddings` wrote is part of this module's public interface, and users' scripts import it from here.
__all__ = [
    "INPUTS",
    "EmbeddingTable",
    "ExtractionOptions",
    "ExtractionSummary",
    "compute_embeddings",
    "embed_batch",
    "embed_pixel_batch",
    "extract_embeddings",
    "load_backbone",
    "load_spectrum_extractor",
    "read_embeddings",
]


# --------------------------------------------------------------------------- model

Inputs = Literal["images", "spectra", "images+spectra"]
#: What an embedding can be made from; the embedding pools the patches of the modality it is made from.
INPUTS: tuple[str, ...] = ("images", "spectra", "images+spectra")
_POOLED_MODALITY = {"images": "images", "spectra": "spectra", "images+spectra": "both"}


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

    with plain_load_reports():  # a fine-tuned classifier's folder reports its unused head weights
        model = AutoModel.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
    processor = AutoImageProcessor.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    return model.eval(), processor


def load_spectrum_extractor(model, model_name_or_path: str | os.PathLike | None = None,
                            inputs: str = "spectra", trust_remote_code: bool = True):
    """The spectrum extractor for embedding `model` from `inputs` (None for "images").

    The one saved with the model (its folder's `AstroPTProcessor`) when there is one, else the default
    extractor, as pretraining builds it. An images-only model given spectra inputs is refused.
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs={inputs!r} is not valid; expected one of {list(INPUTS)}")
    if inputs == "images":
        return None
    config = _backbone(model).config
    if not getattr(config, "has_spectra", False):
        raise ValueError(f"inputs={inputs!r} needs a model that reads spectra; {model_name_or_path or 'this model'} "
                         f"has modalities {list(config.modalities)} (use inputs='images')")
    if model_name_or_path is not None:
        from transformers import AutoProcessor

        try:
            saved = AutoProcessor.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError):  # no processor folder, or only an image processor's config
            saved = None
        if getattr(saved, "feature_extractor", None) is not None:
            return saved.feature_extractor
    from astropt_hf.feature_extraction_astropt import AstroPTSpectrumFeatureExtractor

    return AstroPTSpectrumFeatureExtractor()


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


@torch.no_grad()
def embed_batch(model, batch: dict, inputs: str = "images", layer: str | int | None = None,
                pooling: str | None = None, pooling_num_patches: int | None = None, bf16: bool = False) -> np.ndarray:
    """One `EmbeddingCollator` batch -> (B, D) float32 embeddings from its images, spectra or both (`inputs`).

    Spectra alone run the spectrum patches only; with both, the spectrum follows the image in one sequence
    and the embedding is the mean of the two modalities' pooled embeddings (`AstroPTModel.pool`).
    """
    if inputs == "images":
        return embed_pixel_batch(model, batch["pixel_values"], layer, pooling, pooling_num_patches, bf16)
    backbone = _backbone(model)
    device = next(backbone.parameters()).device
    spectra = {name: batch[name].to(device, non_blocking=True) for name in SPECTRUM_KEYS}
    pixel_values = batch["pixel_values"].to(device, non_blocking=True) if inputs == "images+spectra" else None
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        embeddings = backbone.get_image_embeddings(
            pixel_values, layer=layer, pooling=pooling, pooling_num_patches=pooling_num_patches,
            modality=_POOLED_MODALITY[inputs], **spectra,
        )  # fmt: skip
    return embeddings.float().cpu().numpy()


# --------------------------------------------------------------------------- in memory


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
    inputs: Inputs = "images",
    spectrum_extractor=None,
) -> np.ndarray:
    """Embed every row of a map-style `datasets.Dataset`, in order; returns (N, D) float32.

    A row whose image cannot be decoded or processed (or, with spectra `inputs`, that has no usable
    spectrum) is logged by the data layer and gets a row of NaN, so the result stays aligned with the
    dataset (drop those rows before probing). `spectrum_extractor` prepares the spectra (default:
    `load_spectrum_extractor(model, inputs=inputs)`, the default extractor).
    """
    from tqdm.auto import tqdm

    if is_streaming_dataset(dataset):
        raise ValueError("compute_embeddings needs a map-style dataset; use extract_embeddings for streams")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to embed")
    width = _backbone(model).config.hidden_size
    result = np.full((len(dataset), width), np.nan, dtype=np.float32)
    if spectrum_extractor is None:
        spectrum_extractor = load_spectrum_extractor(model, inputs=inputs)
    loader = pixel_batches(dataset, processor, image_column, None, batch_size, num_workers,
                           spectrum_extractor=spectrum_extractor if inputs != "images" else None)
    with tqdm(total=len(dataset), unit="gal", desc="embedding", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            if batch["rows"]:
                result[batch["rows"]] = embed_batch(model, batch, inputs, layer, pooling, pooling_num_patches, bf16)
            bar.update(len(batch["rows"]) + batch["num_skipped"])
    skipped = int(np.isnan(result[:, 0]).sum())
    if skipped:
        logger.warning("compute_embeddings: %d of %d rows could not be embedded (NaN rows)", skipped, len(dataset))
    return result


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractionOptions:
    """How `extract_embeddings` reads the dataset, embeds it and writes the file.

    Attributes:
        batch_size: images per forward pass.
        layer, pooling, pooling_num_patches: embedding choices (default: the model config's).
        bf16: bfloat16 autocast for the forward pass.
        image_column: the dataset's image column.
        id_column: unique per row, written as `id` (None: the row number).
        carry_columns: scalar catalogue columns copied into the file (None: every scalar column).
        rows_per_chunk: rows per chunk file and per row group of the final file; a killed run loses
            at most the chunk each process was filling.
        num_workers: DataLoader workers per process.
        overwrite: delete a previous output and its chunks first.
        model_name, extra_metadata: recorded in the file's metadata (e.g. how to reopen the dataset).
        progress: a progress bar on the main process.
        inputs: embed from "images", "spectra" or "images+spectra" (spectra need a model that reads them;
            recorded in the file's metadata, so a resume with other inputs is refused).
        spectrum_extractor: prepares the spectra (None: `load_spectrum_extractor(model, model_name, inputs)`).
    """

    batch_size: int = 64
    layer: str | int | None = None
    pooling: str | None = None
    pooling_num_patches: int | None = None
    bf16: bool = False
    image_column: str = "image"
    id_column: str | None = "id"
    carry_columns: Sequence[str] | None = None
    rows_per_chunk: int = 4096
    num_workers: int = 0
    overwrite: bool = False
    model_name: str | None = None
    extra_metadata: dict[str, Any] | None = None
    progress: bool = True
    inputs: Inputs = "images"
    spectrum_extractor: Any = None


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


class _Processes:
    """This process's place among an `accelerate.Accelerator`'s processes (one process without one)."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def totals(self, embedded: int, unreadable: int, seconds: float) -> tuple[int, int, float]:
        """Counts summed over the processes; the slowest process's time."""
        if self.accelerator is None or self.world == 1:
            return embedded, unreadable, seconds
        from accelerate.utils import gather_object

        counts = gather_object([(embedded, unreadable, seconds)])
        return sum(c[0] for c in counts), sum(c[1] for c in counts), max(c[2] for c in counts)


def _file_metadata(config, options: ExtractionOptions) -> dict[str, Any]:
    return {
        "model": str(options.model_name) if options.model_name is not None else getattr(config, "_name_or_path", ""),
        "layer": str(config.embedding_layer if options.layer is None else options.layer),
        "pooling": options.pooling or config.pooling,
        "pooling_num_patches": int(
            options.pooling_num_patches if options.pooling_num_patches is not None else config.pooling_num_patches
        ),
        "embedding_dim": int(config.hidden_size),
        "bf16": bool(options.bf16),
        "inputs": options.inputs,
        **(options.extra_metadata or {}),
    }


def _carried_columns(dataset, options: ExtractionOptions) -> list[str]:
    """The catalogue columns to copy, after checking the image and id columns exist."""
    columns = dataset.column_names or []
    image_column, id_column = options.image_column, options.id_column
    if image_column not in columns:
        raise ValueError(f"dataset has no image column {image_column!r}; columns are {columns}")
    if id_column is not None and id_column not in columns:
        raise ValueError(
            f"dataset has no id column {id_column!r}; columns are {columns} (id_column=None numbers the rows)"
        )
    if options.carry_columns is not None:
        carry = list(options.carry_columns)
    else:
        carry = _scalar_columns(dataset, exclude=(image_column, id_column or "", ROW_COLUMN, EMBEDDING_COLUMN))
    missing = [c for c in carry if c not in columns or c in ("id", ROW_COLUMN, EMBEDDING_COLUMN)]
    if missing:
        raise ValueError(f"carry_columns {missing} are not carriable columns of the dataset {columns}")
    return carry


def _remaining_batches(dataset, processor, options: ExtractionOptions, carry, done: set[str], processes: _Processes,
                       spectrum_extractor=None):
    """This process's share of the rows not yet embedded: (DataLoader, its row count or None, rows done)."""
    reading = (dataset, processor, options.image_column, options.id_column, options.batch_size, options.num_workers)
    if is_streaming_dataset(dataset):
        loader = pixel_batches(*reading, carry_columns=carry, done=done, rank=processes.rank, world=processes.world,
                               spectrum_extractor=spectrum_extractor)
        return loader, None, len(done)
    ids = _row_ids(dataset, options.id_column)
    remaining = [i for i, row_id in enumerate(ids) if row_id not in done]
    # Contiguous shares: chunks sorted by first row then give the file in dataset order.
    share = -(-len(remaining) // processes.world)
    mine = remaining[processes.rank * share : (processes.rank + 1) * share]
    loader = pixel_batches(*reading, indices=mine, carry_columns=carry, spectrum_extractor=spectrum_extractor)
    return loader, len(mine), len(done.intersection(ids))


def _embed_into(model, loader, writer, options: ExtractionOptions, total, processes: _Processes):
    """Embed every batch of `loader` into `writer`; returns (rows embedded, images unreadable, seconds)."""
    from tqdm.auto import tqdm

    embedded = unreadable = 0
    started = time.perf_counter()
    desc = "embedding" if processes.world == 1 else f"embedding (rank 0 of {processes.world})"
    show = options.progress and processes.is_main
    with tqdm(total=total, unit="gal", desc=desc, disable=not show, smoothing=0.1) as bar:
        for batch in loader:
            unreadable += batch["num_skipped"]
            if batch["ids"]:
                embeddings = embed_batch(
                    model, batch, options.inputs, options.layer, options.pooling, options.pooling_num_patches,
                    options.bf16,
                )  # fmt: skip
                writer.add(batch, embeddings)
                embedded += len(batch["ids"])
            bar.update(len(batch["ids"]) + batch["num_skipped"])
        writer.flush()
    return embedded, unreadable, time.perf_counter() - started


def extract_embeddings(
    model,
    dataset,
    processor,
    output: str | os.PathLike,
    options: ExtractionOptions | None = None,
    accelerator=None,
) -> ExtractionSummary:
    """Embed a dataset into a Parquet file, resumably, on one or many processes.

    Args:
        model: an astroPT model (any head) already on its device.
        dataset: a `datasets.Dataset` (or a streaming `IterableDataset`) with an image column; the id
            column and the carried catalogue columns (`options`) are copied into the output.
        output: the Parquet file to write. Rows whose id is already in it (or in its ``.parts`` folder
            from an interrupted run) are skipped.
        options: `ExtractionOptions` (default: all defaults).
        accelerator: an `accelerate.Accelerator` for multi-process runs; each process embeds a contiguous
            share of the remaining rows (streams: `split_dataset_by_node`) and the main process merges the
            chunks at the end.
    Returns:
        `ExtractionSummary` (its `throughput_line()` is what the CLI prints).
    """
    options = options or ExtractionOptions()
    processes = _Processes(accelerator)
    config = _backbone(model).config
    spectrum_extractor = options.spectrum_extractor
    if spectrum_extractor is None:  # also checks that the model reads spectra when the inputs have them
        spectrum_extractor = load_spectrum_extractor(model, options.model_name, options.inputs)
    metadata = _file_metadata(config, options)
    carry = _carried_columns(dataset, options)
    store = EmbeddingStore(output)
    if processes.is_main:
        store.prepare(overwrite=options.overwrite)
    processes.barrier()
    done = store.done_ids(metadata)
    # Every process must finish reading before any writes a new chunk, or their views would differ.
    processes.barrier()

    loader, total, num_done = _remaining_batches(dataset, processor, options, carry, done, processes,
                                                 spectrum_extractor if options.inputs != "images" else None)
    writer = store.chunk_writer(processes.rank, options.rows_per_chunk, _arrow_types(dataset, carry), metadata)
    embedded, unreadable, seconds = processes.totals(*_embed_into(model, loader, writer, options, total, processes))
    processes.barrier()
    merged = store.finish(options.rows_per_chunk) if processes.is_main else None
    processes.barrier()
    if unreadable:
        logger.warning("%d images could not be decoded or processed and were skipped (not written)", unreadable)
    return ExtractionSummary(
        output=store.output,
        num_rows=len(done) if merged is None else merged,
        num_new=embedded,
        num_skipped=num_done,
        num_unreadable=unreadable,
        embedding_dim=int(config.hidden_size),
        seconds=seconds,
        num_processes=processes.world,
        metadata=metadata,
    )

"""DataLoaders of processed images that remember which dataset rows they hold.

Embedding a catalogue needs each batch's pixel values matched back to rows even when the data layer
skips an image it cannot read. Every example is tagged with its id (a string) and its row number before
collation; `EmbeddingCollator` keeps the tags, and the carried catalogue columns, of the kept images only.
Map-style datasets are read a batch of rows at a time; streams are tagged on the fly, and can be split
between processes and filtered of rows already done before any image is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sources import is_streaming_dataset

ID_KEY = "__astropt_id__"  # the row's id as a string, added to each example
ROW_KEY = "__astropt_row__"  # the row's position in the dataset
SPECTRUM_KEYS = ("spectrum_values", "spectrum_wavelengths", "spectrum_mask")

__all__ = ["ID_KEY", "ROW_KEY", "SPECTRUM_KEYS", "EmbeddingCollator", "pixel_batches"]


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

    With a `spectrum_extractor` the batch also holds `spectrum_values`, `spectrum_wavelengths` and
    `spectrum_mask` (B, L), and a row without a usable spectrum (none, or one the extractor rejects) is
    skipped and counted like an unreadable image: an all-masked spectrum would give an embedding of nothing.
    """

    def __init__(self, processor, image_column: str = "image", carry_columns: Sequence[str] = (),
                 spectrum_extractor=None):
        from .collate import GalaxyCollator

        self.images = GalaxyCollator(processor, image_column=image_column, id_column=ID_KEY,
                                     spectrum_extractor=spectrum_extractor)
        self.carry_columns = list(carry_columns)
        self.with_spectra = spectrum_extractor is not None

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        batch = self.images(examples)
        by_id = {example[ID_KEY]: example for example in examples}
        keep = list(range(len(batch["ids"])))
        num_skipped = batch["num_skipped"]
        if self.with_spectra:
            keep = [i for i in keep if bool(batch["spectrum_mask"][i].any())]
            num_skipped += len(batch["ids"]) - len(keep)
        kept = [by_id[batch["ids"][i]] for i in keep]
        out = {
            "pixel_values": batch["pixel_values"][keep],
            "ids": [batch["ids"][i] for i in keep],
            "rows": [example[ROW_KEY] for example in kept],
            "columns": {name: [example[name] for example in kept] for name in self.carry_columns},
            "num_skipped": num_skipped,
        }
        if self.with_spectra:
            out.update({name: batch[name][keep] for name in SPECTRUM_KEYS})
        return out


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
    spectrum_extractor=None,
):
    """DataLoader of `EmbeddingCollator` batches.

    Map-style datasets read the given `indices` (default: all rows). Streaming datasets are split
    between processes with `split_dataset_by_node` and rows whose id is in `done` are dropped before
    any image is decoded. With a `spectrum_extractor` the batches carry spectra too (`EmbeddingCollator`).
    """
    from torch.utils.data import DataLoader

    collate = EmbeddingCollator(processor, image_column, carry_columns, spectrum_extractor)
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

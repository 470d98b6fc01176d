"""Per-process data for pretraining: an endless, resumable stream of training batches and a fixed
validation subset.

Sharding has one owner, this module: each process reads its own disjoint part (a slice of every global
batch of a seeded permutation for map-style data, `split_dataset_by_node` for streaming data), and the
DataLoaders are *not* passed to `accelerator.prepare`, which would shard them a second time.

The data position is (epoch, batches consumed in that epoch). The permutation of an epoch depends only on
(seed, epoch), and a collated batch always consumes exactly `batch_size` raw items (bad ones are skipped
inside the batch, not replaced), so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from ..data import GalaxyCollator, GalaxySource, is_streaming_dataset, load_galaxy_dataset
from .arguments import ConfigError

logger = logging.getLogger(__name__)


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's batches of one epoch: global batch `b` is items `[b*G, (b+1)*G)` of a permutation
    seeded by (seed, epoch), with G = batch_size x num_replicas, and this rank takes its `batch_size` slice.
    Incomplete global batches at the end of an epoch are dropped, so every rank gets the same count.

    Args:
        start_batch: skip this many batches of the epoch (resuming mid-epoch).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
    ):
        if num_items < batch_size * num_replicas:
            raise ValueError(
                f"the training split has {num_items} items, fewer than one global batch "
                f"(batch_size={batch_size} x {num_replicas} processes)"
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.epoch, self.start_batch, self.shuffle = seed, epoch, start_batch, shuffle

    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.num_replicas)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        global_batch = self.batch_size * self.num_replicas
        for batch in range(self.start_batch, self.batches_per_epoch()):
            start = batch * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size]


_SKIPPED = None  # what _SkipFirstBatches returns for a batch that was consumed before the resume


class _SkipFirstBatches:
    """collate_fn that turns the first `num_batches` batches of an epoch into `_SKIPPED`, undecoded.

    With W DataLoader workers, global batch b comes from worker b % W (the DataLoader's round robin), so
    each worker skips its own share; each worker holds its own copy of this object and of its counter.
    """

    def __init__(self, collator, num_batches: int, num_workers: int):
        self.collator, self.num_batches, self.num_workers = collator, num_batches, max(1, num_workers)
        self.done = 0

    def __call__(self, examples):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if self.done < len(range(worker, self.num_batches, self.num_workers)):
            self.done += 1
            return _SKIPPED
        return self.collator(examples)


class TrainBatchStream:
    """Endless training batches for this process, restartable at any (epoch, batch) position."""

    def __init__(
        self,
        source: GalaxySource,
        collator: GalaxyCollator,
        batch_size: int,
        rank: int = 0,
        num_replicas: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_buffer_size: int = 10_000,
        epoch: int = 0,
        batches_in_epoch: int = 0,
    ):
        self.dataset = source.dataset
        self.collator, self.batch_size = collator, batch_size
        self.rank, self.num_replicas, self.seed = rank, num_replicas, seed
        self.num_workers, self.shuffle_buffer_size = num_workers, shuffle_buffer_size
        self.epoch, self.batches_in_epoch = epoch, batches_in_epoch
        self.streaming = is_streaming_dataset(self.dataset)
        if self.streaming:
            from datasets.distributed import split_dataset_by_node

            shuffled = self.dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
            self._shard = split_dataset_by_node(shuffled, rank=rank, world_size=num_replicas)
        self._iterator: Iterator | None = None

    def state(self) -> dict[str, int]:
        """JSON-able position: the next batch is batch `batches_in_epoch` of epoch `epoch`."""
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def _loader(self) -> DataLoader:
        common = {"collate_fn": self.collator, "num_workers": self.num_workers}
        if self.num_workers > 0:
            common["persistent_workers"] = False
        if self.streaming:
            # Resuming mid-epoch re-reads the consumed part of the stream but does not decode it: the first
            # batches come out as markers that __next__ drops. (`IterableDataset.skip` would be cheaper but
            # does not keep the per-epoch shard order of a shuffled, node-split stream.)
            self._shard.set_epoch(self.epoch)
            common["collate_fn"] = _SkipFirstBatches(self.collator, self.batches_in_epoch, self.num_workers)
            return DataLoader(self._shard, batch_size=self.batch_size, drop_last=True, **common)
        sampler = ShardedBatchSampler(
            len(self.dataset), self.batch_size, self.num_replicas, self.rank, self.seed, self.epoch,
            start_batch=self.batches_in_epoch,
        )
        return DataLoader(self.dataset, batch_sampler=sampler, **common)

    def __iter__(self) -> TrainBatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        for _attempt in range(2):
            if self._iterator is None:
                self._iterator = iter(self._loader())
            try:
                batch = next(self._iterator)
                while batch is _SKIPPED:
                    batch = next(self._iterator)
            except StopIteration:
                if self.batches_in_epoch == 0:
                    raise RuntimeError(
                        f"process {self.rank} got no training batch in epoch {self.epoch}: its part of the "
                        f"data holds fewer than batch_size={self.batch_size} items"
                    ) from None
                self._iterator, self.epoch, self.batches_in_epoch = None, self.epoch + 1, 0
                continue
            self.batches_in_epoch += 1
            return batch
        raise RuntimeError("unreachable: an epoch ended without a batch")

    def close(self) -> None:
        self._iterator = None


def validation_batches(
    source: GalaxySource,
    collator: GalaxyCollator,
    num_items: int,
    batch_size: int,
    rank: int = 0,
    num_replicas: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """This process's share of the fixed validation subset: the first `num_items` items, dealt round-robin.

    Ranks may get one batch more or less than each other; the evaluation loop pads with dummy batches so
    that every process runs the same number of forward passes (FSDP and DeepSpeed need that).
    """
    dataset = source.dataset
    if is_streaming_dataset(dataset):
        from datasets.distributed import split_dataset_by_node

        subset = split_dataset_by_node(dataset.take(num_items), rank=rank, world_size=num_replicas)
        return DataLoader(subset, batch_size=batch_size, collate_fn=collator, num_workers=0)
    count = min(num_items, len(dataset))
    indices = list(range(rank, count, num_replicas))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collator, num_workers=num_workers)


def load_pretraining_sources(args, accelerator) -> tuple[GalaxySource, GalaxySource]:
    """(train, validation) sources for the run's `dataset` setting; the main process loads first so that
    the synthetic set is generated (or a download cached) once, not once per process."""
    options: dict[str, Any] = {
        "streaming": args.streaming,
        "image_column": args.image_column,
        "id_column": args.id_column,
        "cache_dir": args.data_cache_dir,
        "bands": args.bands,
    }
    if args.dataset.strip().lower() == "synthetic":
        options.update(
            num_train=args.synthetic_num_train,
            num_validation=args.synthetic_num_validation,
            num_test=args.synthetic_num_test,
            image_size=args.synthetic_image_size or args.model["image_size"],
            seed=args.synthetic_seed,
        )
    with accelerator.main_process_first():
        try:
            train = load_galaxy_dataset(args.dataset, split="train", **options)
            validation = load_galaxy_dataset(args.dataset, split="validation", **options)
        except (ValueError, FileNotFoundError) as err:  # unknown spec, split or column: a settings problem
            raise ConfigError(f"config key 'dataset' ({args.dataset!r}): {err}") from err
    return _fast_arrays(train), _fast_arrays(validation)


def _fast_arrays(source: GalaxySource) -> GalaxySource:
    """Map-style sources whose image column holds arrays (the synthetic set) are read as numpy arrays,
    not nested Python lists: the same values, an order of magnitude faster to collate."""
    import datasets

    dataset = source.dataset
    if is_streaming_dataset(dataset) or dataset.features is None or dataset.format.get("type") == "custom":
        return source  # a custom format decodes rows already (Multimodal Universe structs)
    feature = dataset.features.get(source.image_column)
    array_types = tuple(
        getattr(datasets, name) for name in ("Array2D", "Array3D", "Array4D", "Sequence", "List") if hasattr(datasets, name)
    )
    if isinstance(feature, array_types):
        dataset = dataset.with_format("numpy", columns=[source.image_column], output_all_columns=True)
        source = dataclasses.replace(source, dataset=dataset)
    return source


def count_items(source: GalaxySource) -> int | None:
    """Number of items of a map-style source, None for a stream."""
    return None if is_streaming_dataset(source.dataset) else len(source.dataset)


__all__ = [
    "ShardedBatchSampler",
    "TrainBatchStream",
    "count_items",
    "load_pretraining_sources",
    "validation_batches",
]

"""Command-line dataset options shared by the downstream scripts, with the same names as pretraining's.

`add_dataset_arguments(parser)` adds ``--dataset``, ``--split``, ``--streaming``, ``--image_column``,
``--id_column``, ``--data_cache_dir`` and the ``--synthetic_*`` sizes; `dataset_spec(args, image_size)`
turns them into a small JSON-able dict that `open_dataset(spec)` loads through
`astropt_hf.data.load_galaxy_dataset`. Embedding files record the spec, so a later step (similarity
search) can reopen the same rows without being told again.
"""

from __future__ import annotations

import argparse
from typing import Any

# Same defaults as pretraining's demo (astropt_hf.training.arguments), so the cached set is reused.
SYNTHETIC_DEFAULTS = {"num_train": 3000, "num_validation": 256, "num_test": 512, "seed": 0}

__all__ = ["add_dataset_arguments", "dataset_spec", "open_dataset"]


def add_dataset_arguments(
    parser: argparse.ArgumentParser, default_split: str | None = "test", default_dataset: str | None = "synthetic"
) -> None:
    """Add the dataset options to `parser` (in their own argument group)."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=default_dataset,
                       help="'synthetic', an image folder, parquet/arrow file(s), a save_to_disk folder or a hub id"
                       + ("" if default_dataset else " (default: the one recorded in the embeddings file)"))
    group.add_argument("--split", default=default_split, choices=("train", "validation", "test", "all"),
                       help=f"split to use (default: {default_split or 'the one recorded in the embeddings file'})")
    group.add_argument("--streaming", action="store_true", help="read the dataset lazily (IterableDataset)")
    group.add_argument("--image_column", default=None, help="image column (auto-detected when omitted)")
    group.add_argument("--id_column", default=None, help="id column (auto-detected when omitted)")
    group.add_argument("--data_cache_dir", default=None, help="cache for the synthetic set / datasets downloads")
    for name, default in SYNTHETIC_DEFAULTS.items():
        group.add_argument(f"--synthetic_{name}", type=int, default=default, help=f"synthetic set: {name}")
    group.add_argument("--synthetic_image_size", type=int, default=None,
                       help="synthetic stamp size in pixels (default: the model's image_size)")  # fmt: skip


def dataset_spec(args: argparse.Namespace, image_size: int | None = None) -> dict[str, Any]:
    """The parsed options as a JSON-able dict; `image_size` fills in the synthetic stamp size."""
    spec: dict[str, Any] = {
        "dataset": args.dataset,
        "split": args.split,
        "streaming": bool(args.streaming),
        "image_column": args.image_column,
        "id_column": args.id_column,
        "data_cache_dir": args.data_cache_dir,
    }
    if args.dataset.strip().lower() == "synthetic":
        synthetic = {name: getattr(args, f"synthetic_{name}") for name in SYNTHETIC_DEFAULTS}
        size = args.synthetic_image_size or image_size
        if size is not None:
            synthetic["image_size"] = int(size)
        spec["synthetic"] = synthetic
    return spec


def open_dataset(spec: dict[str, Any], split: str | None = None):
    """Load the `GalaxySource` a spec describes (optionally another split of the same data)."""
    from astropt_hf.data import load_galaxy_dataset

    return load_galaxy_dataset(
        spec["dataset"],
        split=split or spec.get("split", "test"),
        streaming=bool(spec.get("streaming", False)),
        image_column=spec.get("image_column"),
        id_column=spec.get("id_column"),
        cache_dir=spec.get("data_cache_dir"),
        **spec.get("synthetic", {}),
    )

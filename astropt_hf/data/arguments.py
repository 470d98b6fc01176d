"""The dataset options of every script (pretraining, fine-tuning, embedding extraction, probes, similarity
search): one `DataArguments` dataclass, parsed by `astropt_hf.command_line.ArgumentParser`.

`DataArguments.spec(split, image_size)` turns the options into a small JSON-able dict that
`open_dataset(spec)` loads through `astropt_hf.data.load_galaxy_dataset`. Embedding files record the
spec, so a later step (similarity search) can reopen the same rows without being told again. Which split
a script reads is the script's own option (pretraining reads train and validation, fine-tuning two
splits, extraction one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..command_line import option

__all__ = ["DataArguments", "open_dataset"]


@dataclasses.dataclass
class DataArguments:
    """Where the galaxies come from, and the size of the built-in synthetic set."""

    _argument_group_name = "data"

    dataset: str = option(
        "synthetic", "'synthetic', an image folder, parquet/arrow file(s), a save_to_disk folder or a hub dataset id"
    )
    streaming: bool = option(False, "read the dataset lazily (IterableDataset), for data larger than the disk")
    image_column: str | None = option(None, "image column (auto-detected when null)")
    id_column: str | None = option(None, "id column (auto-detected when null)")
    bands: str | None = option(
        None, "Multimodal Universe images: the bands to keep, in order, e.g. 'g,r,z' (matches 'DES-G'); null: all"
    )
    data_cache_dir: str | None = option(None, "cache for the synthetic set / datasets downloads (null: default)")
    synthetic_num_train: int = option(3000, "synthetic set: training galaxies", minimum=1)
    synthetic_num_validation: int = option(256, "synthetic set: validation galaxies", minimum=1)
    synthetic_num_test: int = option(512, "synthetic set: test galaxies", minimum=0)
    synthetic_image_size: int | None = option(None, "synthetic stamp size in pixels (null: the model's image_size)")
    synthetic_seed: int = option(0, "seed of the synthetic set (separate from the training seed, so the cache is reused)")
    max_image_side_factor: int = option(
        16, "pretraining: skip (and count) images of more than (this x image_size)^2 pixels per band, judged "
        "from the file's header before anything is decoded", minimum=1,
    )

    def is_synthetic(self) -> bool:
        return self.dataset is not None and self.dataset.strip().lower() == "synthetic"

    def spec(self, split: str | None, image_size: int | None = None) -> dict[str, Any]:
        """The options as a JSON-able dict; `image_size` fills in the synthetic stamp size."""
        spec: dict[str, Any] = {
            "dataset": self.dataset,
            "split": split,
            "streaming": bool(self.streaming),
            "image_column": self.image_column,
            "id_column": self.id_column,
            "data_cache_dir": self.data_cache_dir,
        }
        if self.bands:
            spec["bands"] = self.bands
        if self.is_synthetic():
            synthetic = {
                "num_train": self.synthetic_num_train,
                "num_validation": self.synthetic_num_validation,
                "num_test": self.synthetic_num_test,
                "seed": self.synthetic_seed,
            }
            size = self.synthetic_image_size or image_size
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
        bands=spec.get("bands"),
        **spec.get("synthetic", {}),
    )

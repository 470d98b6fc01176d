"""One entry point for every kind of galaxy data: ``load_galaxy_dataset(spec, split)``.

``spec`` may be:

* ``"synthetic"``: the built-in GalSim set (``astropt_hf.data.synthetic``);
* a folder of images (PNG/JPEG/TIFF/FITS/.npy, searched recursively; ids are file stems, or
  relative paths without suffix when stems repeat). If the folder has ``train`` /
  ``validation`` (or ``val``/``valid``) / ``test`` subfolders, those are the splits;
* a folder written by ``save_to_disk`` (a ``DatasetDict`` or a single ``Dataset``);
* a parquet or arrow file, a glob of them, or a folder holding only such files;
* a ``datasets`` hub id (e.g. ``Smith42/galaxies``: columns ``image`` and ``dr8_id``).

**Split rule.** When the source has the requested split, it is used as is. When it lacks a
``validation`` split, ``train`` and ``validation`` are carved from its ``train`` data (or from all
of it, for a flat folder or a single file): an item goes to validation when the SHA-1 of its id (or
of its row number / relative path, if it has no id) falls in the lowest ``VALIDATION_FRACTION``
(10%), so the carve is deterministic, needs no shuffling, works while streaming, and keeps items in
place when more data are added. ``split="all"`` returns every split together.

**Image folders** list every entry whose name ends in an image suffix (hidden names excepted),
whatever it is: empty files, FIFOs, directories named like images, dangling links, symbolic link
loops and files whose names are not valid UTF-8 all become rows that ``GalaxyCollator`` skips and
counts, with the reason in its warning, instead of being left out silently or aborting the load. A
name that is not valid UTF-8 is shown with its undecodable bytes as ``\\xNN`` escapes (datasets
cannot store it as it is), so that row's file is never read.

Image columns holding ``datasets.Image`` features are cast to ``decode=False``, so a corrupt image
reaches ``GalaxyCollator`` as raw bytes (and is skipped and counted there) instead of raising
inside the dataset.

**Multimodal Universe layouts** (Legacy Survey / HSC ``image`` structs with per-band ``flux``, ``ivar``,
``mask``, ``band``, ...; DESI ``spectrum`` structs with ``flux``, ``ivar``, ``lambda``, ``mask``; and
cross-matched sets holding both) are recognised from the features (or a stream's first row) and decoded
lazily as rows are read: the image becomes a (C, H, W) float32 array of the ``bands`` asked for, bad
pixels 0; the spectrum a dict of arrays with ``mask`` True = bad (``GalaxySource.spectrum_column``).
See ``astropt_hf.data.multimodal_universe`` for what happens to masked and zero-ivar pixels.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from .decoding import IMAGE_SUFFIXES, has_suffix, printable_path
from .multimodal_universe import MMURowDecoder, apply_mmu_decoding, mmu_columns

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
IMAGE_COLUMN_CANDIDATES = ("image", "pixel_values", "img")
ID_COLUMN_CANDIDATES = ("id", "dr8_id", "objid", "name", "object_id", "galaxy_id", "iauname")
DATA_FILE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
_SPLIT_ALIASES = {"validation": ("validation", "val", "valid", "dev"), "train": ("train",), "test": ("test",)}
_MAX_STREAM_SHARDS = 64


@dataclasses.dataclass
class GalaxySource:
    """A loaded galaxy dataset and how to read it.

    Attributes:
        dataset: a ``datasets.Dataset`` (map-style) or ``datasets.IterableDataset`` (streaming).
        image_column: column holding the image, undecoded (decode with ``decode_image``); pixel
            arrays (Array3D, Sequence) come as numpy arrays. None only for a spectra-only source (a
            Multimodal Universe ``spectrum`` column and no image column).
        id_column: column holding a per-item id, or ``None`` if the source has none.
        catalogue_columns: every other column (e.g. the synthetic truth), in dataset order.
        origin: human-readable description of what was loaded, for logs.
        spectrum_column: column holding Multimodal Universe spectra, decoded to
            ``{"flux", "ivar", "lambda", "mask"}`` arrays (``mask`` True = bad) or None where a row has none.
        bands: the image bands selected (Multimodal Universe images), None for all.
    """

    dataset: Any
    image_column: str | None
    id_column: str | None
    catalogue_columns: tuple[str, ...]
    origin: str
    spectrum_column: str | None = None
    bands: tuple[str, ...] | None = None


def load_galaxy_dataset(
    spec: str = "synthetic",
    split: str = "train",
    streaming: bool = False,
    image_column: str | None = None,
    id_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    bands: str | list[str] | tuple[str, ...] | None = None,
    **synthetic_kwargs: Any,
) -> GalaxySource:
    """Load one split of a galaxy dataset (see the module docstring for ``spec`` and splits).

    Args:
        spec: ``"synthetic"``, a folder, a file or glob, a saved-to-disk folder or a hub id.
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``.
        streaming: return an ``IterableDataset`` that reads lazily (data larger than the disk).
        image_column, id_column: override the auto-detected columns (image among
            ``IMAGE_COLUMN_CANDIDATES``, id among ``ID_COLUMN_CANDIDATES``).
        cache_dir: synthetic-set cache (for ``"synthetic"``) or ``datasets`` cache (parquet, arrow,
            hub); ``None`` uses the defaults.
        bands: Multimodal Universe images only: the bands to keep, in this order (``"g,r,z"`` or a
            list; ``"g"`` matches a band named ``"DES-G"``); ``None`` keeps every band.
        **synthetic_kwargs: forwarded to ``load_synthetic_galaxies`` (sizes, ``image_size``, ``seed``,
            ``num_proc``); an error for other specs.

    Raises:
        ValueError: unknown spec (the message lists what was tried), unknown split (lists the
            available ones), or missing columns (lists the available ones).
    """
    split = split.lower()
    if split not in ("train", "validation", "test", "all"):
        raise ValueError(f"split must be 'train', 'validation', 'test' or 'all', got {split!r}")
    if spec.strip().lower() == "synthetic":
        splits, origin = _synthetic_splits(cache_dir, synthetic_kwargs), "synthetic GalSim galaxies"
        default_columns = ("image", "id")
    else:
        if synthetic_kwargs:
            raise ValueError(
                f"options {sorted(synthetic_kwargs)} only apply to spec='synthetic', not {spec!r}"
            )
        splits, origin = _resolve_spec(spec, streaming, cache_dir)
        default_columns = (None, None)

    dataset = _select_split(splits, split, spec, streaming)
    if streaming and not is_streaming_dataset(dataset):
        dataset = dataset.to_iterable_dataset(num_shards=_stream_shards(len(dataset)))

    columns = _column_names(dataset)
    spectra_only = image_column is None and not set(IMAGE_COLUMN_CANDIDATES) & set(columns) and "spectrum" in columns
    image_column = _pick_column(
        columns, image_column or default_columns[0], IMAGE_COLUMN_CANDIDATES, "image", spec, required=not spectra_only
    )
    id_column = _pick_column(
        columns, id_column or default_columns[1], ID_COLUMN_CANDIDATES, "id", spec, required=False
    )
    bands = _band_list(bands)
    dataset, spectrum_column = _decode_multimodal_universe(dataset, image_column, bands, spec)
    if image_column is None and spectrum_column is None:
        raise ValueError(f"{spec!r} has no image column among {list(IMAGE_COLUMN_CANDIDATES)} and its 'spectrum' "
                         f"column is not a Multimodal Universe spectrum (flux, lambda); available columns: {columns}")
    catalogue = tuple(c for c in columns if c not in (image_column, id_column, spectrum_column))
    return GalaxySource(dataset, image_column, id_column, catalogue, f"{origin} [{split}]", spectrum_column,
                        tuple(bands) if bands else None)


def _band_list(bands) -> list[str] | None:
    if bands is None:
        return None
    names = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else [str(b).strip() for b in bands]
    if not names or not all(names) or len(set(n.lower() for n in names)) != len(names):
        raise ValueError(f"bands={bands!r} is not valid; expected distinct band names such as 'g,r,z'")
    return names


def _decode_multimodal_universe(dataset, image_column: str, bands: list[str] | None, spec: str):
    """(dataset, spectrum column): Multimodal Universe image / spectrum structs decoded as rows are read;
    other image columns read as before."""
    first_row = next(iter(dataset)) if dataset.features is None else None
    mmu_image, spectrum_column = mmu_columns(dataset, image_column, first_row)
    mmu_image = mmu_image and image_column is not None
    if bands and not mmu_image:
        raise ValueError(
            f"bands={bands} needs Multimodal Universe images (an {image_column!r} struct with per-band flux and "
            f"band names); {spec!r} does not hold them"
        )
    if not mmu_image and spectrum_column is None:
        return _arrays_as_numpy(dataset, image_column), None
    decoder = MMURowDecoder(image_column if mmu_image else None, spectrum_column, bands)
    return apply_mmu_decoding(dataset, decoder), spectrum_column


# --------------------------------------------------------------------------- spec resolution
# Each resolver returns ``{split_name: loader}``, where a loader is a zero-argument callable that
# returns the split's dataset, so nothing is read for splits that are not asked for.


def _synthetic_splits(cache_dir, kwargs) -> dict:
    from .synthetic import load_synthetic_galaxies

    dataset_dict = load_synthetic_galaxies(cache_dir=cache_dir, **kwargs)
    return {name: (lambda d=d: d) for name, d in dataset_dict.items()}


def _resolve_spec(spec: str, streaming: bool, cache_dir) -> tuple[dict, str]:
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _saved_splits(path), f"saved dataset {path}"
        images = _image_files(path)
        if images:
            return _folder_splits(path), f"image folder {path}"
        data_files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in DATA_FILE_SUFFIXES]
        if data_files:
            return _builder_splits(str(path), None, streaming, cache_dir), f"data files in {path}"
        raise ValueError(
            f"folder {path} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)}), no parquet/arrow "
            "files and no save_to_disk dataset"
        )
    matches = (
        sorted(glob.glob(os.path.expanduser(spec)))
        if glob.has_magic(spec)
        else ([spec] if path.is_file() else [])
    )
    if matches:
        kinds = {DATA_FILE_SUFFIXES.get(Path(m).suffix.lower()) for m in matches}
        if None in kinds or len(kinds) != 1:
            raise ValueError(
                f"{spec!r} matches {len(matches)} file(s) that are not all parquet or all arrow "
                f"(first: {matches[0]}); give a folder for image files"
            )
        return _builder_splits(
            kinds.pop(), matches, streaming, cache_dir
        ), f"{len(matches)} data file(s) {spec}"
    if glob.has_magic(spec):
        raise ValueError(f"the pattern {spec!r} matches no files")
    looks_like_path = spec.startswith((os.sep, ".", "~")) or path.suffix.lower() in (
        *DATA_FILE_SUFFIXES,
        *IMAGE_SUFFIXES,
    )
    if looks_like_path:
        raise ValueError(f"dataset spec {spec!r} looks like a path, but no such file or folder exists")
    try:
        return _builder_splits(spec, None, streaming, cache_dir), f"datasets hub id {spec}"
    except Exception as err:
        raise ValueError(
            f"unknown dataset spec {spec!r}: it is not 'synthetic', not an existing folder or file, "
            f"and loading it as a datasets hub id failed ({type(err).__name__}: {err})"
        ) from err


def _saved_splits(path: Path) -> dict:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        return {name: (lambda d=d: d) for name, d in loaded.items()}
    return {"train": lambda: loaded}


def _builder_splits(path: str, data_files, streaming: bool, cache_dir) -> dict:
    """Splits of a parquet/arrow/hub source, read lazily through ``datasets.load_dataset``."""
    import datasets

    options = {"data_files": data_files} if data_files is not None else {}
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    builder = datasets.load_dataset_builder(path, **options)
    names = list(builder.config.data_files or {}) or list(builder.info.splits or {}) or ["train"]

    def loader(name: str):
        return lambda: datasets.load_dataset(path, split=name, streaming=streaming, **options)

    return {name: loader(name) for name in names}


def _folder_splits(path: Path) -> dict:
    import datasets

    split_dirs = {}
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        for split, aliases in _SPLIT_ALIASES.items():
            if child.name.lower() in aliases and split not in split_dirs:
                split_dirs[split] = child
    roots = split_dirs or {"train": path}

    def loader(root: Path):
        def load():
            files = _image_files(root)
            if not files:
                raise ValueError(f"folder {root} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
            return datasets.Dataset.from_dict(
                {"image": [printable_path(f) for f in files], "id": _file_ids(files, root)}
            )

        return load

    return {split: loader(root) for split, root in roots.items()}


def _image_files(root: Path) -> list[Path]:
    """Entries under ``root`` named like images (recursive, sorted, hidden names skipped). Entries
    that are not readable image files (empty, FIFO, directory, broken link, undecodable name) are
    kept, so that the collator counts them as bad samples rather than they silently vanish."""
    entries = [p for p in sorted(root.rglob("*")) if has_suffix(p.name, IMAGE_SUFFIXES) and not p.name.startswith(".")]
    undecodable = [printable_path(p) for p in entries if printable_path(p) != str(p)]
    if undecodable:
        logger.warning(
            "%d file name(s) under %s are not valid UTF-8; they are skipped and counted as bad samples: %s",
            len(undecodable), printable_path(root), ", ".join(undecodable[:5]) + (" ..." if len(undecodable) > 5 else ""),
        )
    return entries


def _strip_suffix(name: str) -> str:
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _file_ids(files: list[Path], root: Path) -> list[str]:
    stems = [_strip_suffix(printable_path(f.name)) for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return [_strip_suffix(printable_path(f.relative_to(root).as_posix())) for f in files]


# --------------------------------------------------------------------------- split selection


def _select_split(splits: dict, split: str, spec: str, streaming: bool):
    import datasets

    available = {}
    for name in splits:
        for canonical, aliases in _SPLIT_ALIASES.items():
            if name.lower() in aliases:
                available.setdefault(canonical, name)
        available.setdefault(name, name)

    def load(name: str):
        return _keep_images_encoded(splits[name]())

    if split == "all":
        parts = [load(name) for name in splits]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if split in available and (split != "train" or "validation" in available):
        return load(available[split])
    if split in ("train", "validation") and "validation" not in available and "train" in available:
        return _carve(load(available["train"]), want_validation=(split == "validation"), streaming=streaming)
    raise ValueError(f"{spec!r} has no split {split!r}; available splits: {sorted(splits)} (or 'all')")


def is_validation_key(key: str) -> bool:
    """The deterministic carve: True for the ~``VALIDATION_FRACTION`` of keys assigned to validation."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_FRACTION


class _CarveFilter:
    """Picklable filter for streaming carves (DataLoader workers copy it)."""

    def __init__(self, key_column: str | None, want_validation: bool):
        self.key_column = key_column
        self.want_validation = want_validation

    def __call__(self, example: dict, index: int) -> bool:
        key = str(example[self.key_column]) if self.key_column else str(index)
        return is_validation_key(key) == self.want_validation


def _carve(dataset, want_validation: bool, streaming: bool):
    columns = _column_names(dataset)
    key_column = next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)
    if is_streaming_dataset(dataset):
        return dataset.filter(_CarveFilter(key_column, want_validation), with_indices=True)
    keys = dataset[key_column] if key_column else range(len(dataset))
    indices = [i for i, key in enumerate(keys) if is_validation_key(str(key)) == want_validation]
    return dataset.select(indices, keep_in_memory=True)


# --------------------------------------------------------------------------- columns


def is_streaming_dataset(dataset) -> bool:
    """True for a `datasets.IterableDataset` (read lazily, no length, no random access)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def _column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream whose schema is unknown until read: peek at one example
        names = list(next(iter(dataset)).keys())
    return list(names)


def _pick_column(columns, requested, candidates, what: str, spec: str, required: bool = True) -> str | None:
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{spec!r} has no {what} column {requested!r}; available columns: {columns}")
        return requested
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise ValueError(
            f"{spec!r} has no {what} column among {list(candidates)}; available columns: {columns}. "
            f"Pass {what}_column= to choose one."
        )
    return found


def _keep_images_encoded(dataset):
    """Cast every ``datasets.Image`` column to ``decode=False``: a corrupt image then fails in the
    collator, per sample, instead of inside the dataset (and carving never decodes images)."""
    import datasets

    features = dataset.features
    if features is None:
        return dataset
    for name, feature in features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def _arrays_as_numpy(dataset, image_column: str):
    """Pixel arrays stored as arrow lists (Array3D, Sequence) are read straight into numpy, which is
    several times faster than building nested Python lists; other columns keep Python types."""
    import datasets

    features = dataset.features
    feature = None if features is None else features.get(image_column)
    array_types = (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Sequence, datasets.List)
    if not isinstance(feature, array_types):
        return dataset
    if is_streaming_dataset(dataset):  # streams format all columns at once; ids become numpy strings
        return dataset.with_format("numpy")
    return dataset.with_format("numpy", columns=[image_column], output_all_columns=True)


def _stream_shards(length: int) -> int:
    """Largest power of two <= min(length, 64): divides common world sizes for split_dataset_by_node."""
    shards = 1
    while shards * 2 <= min(length, _MAX_STREAM_SHARDS):
        shards *= 2
    return shards

"""The README's usage that the other tests do not reach: the feature-extraction pipeline and the
extract-then-probe chain, where the probe reads the embeddings file instead of embedding again."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from downstream_helpers import dataset_flags, load_script, save_tiny_model
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

from astropt_hf import AstroPTForPreTraining, AstroPTImageProcessor


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    folder = tmp_path / "checkpoint"
    AstroPTForPreTraining(tiny_config()).save_pretrained(folder)
    AstroPTImageProcessor(image_size=16, num_channels=3).save_pretrained(folder)
    return folder


def test_feature_pipeline_pools_one_embedding_per_image_like_processor_and_model(checkpoint, tmp_path):
    galaxy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    png = tmp_path / "galaxy.png"
    galaxy.save(png)
    processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    with torch.no_grad():
        expected = model(**processor(galaxy, return_tensors="pt")).pooler_output  # (1, hidden)

    extractor = pipeline("image-feature-extraction", model=str(checkpoint), trust_remote_code=True)
    from_image = np.asarray(extractor(galaxy, pool=True))
    from_path = np.asarray(extractor(str(png), pool=True))
    assert from_image.shape == from_path.shape == (1, 32)
    np.testing.assert_allclose(from_image, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_path, expected.numpy(), rtol=1e-5, atol=1e-6)  # PNG is lossless
    as_tensor = extractor(galaxy, pool=True, return_tensors=True)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (1, 32)
    batch = extractor([galaxy, str(png)], pool=True)
    assert len(batch) == 2 and np.asarray(batch[1]).shape == (1, 32)
    without_pool = np.asarray(extractor(galaxy))
    assert without_pool.shape == (1, 16, 32)  # one vector per patch

    # The pipeline only takes what transformers' load_image reads (PIL images, paths, URLs); float
    # arrays such as FITS data go through the processor and the model, as the README shows.
    flux = np.random.default_rng(1).normal(0.02, 0.01, size=(3, 16, 16)).astype(np.float32)
    with pytest.raises(TypeError, match="PIL image"):
        extractor(flux, pool=True)
    with torch.no_grad():
        assert model(**processor(flux, return_tensors="pt")).pooler_output.shape == (1, 32)


def _replace_embeddings(source, target, vectors: np.ndarray) -> None:
    """Copy an embeddings Parquet with its `embedding` column (and nothing else) replaced."""
    table = pq.read_table(source)
    flat = pa.array(vectors.astype(np.float32).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    index = table.schema.get_field_index("embedding")
    table = table.set_column(index, table.schema.field(index), column)
    pq.write_table(table, target)


def _probe_counting_forwards(argv) -> tuple[dict, int]:
    """Run the probe CLI in-process; (probe_results.json, forward calls of astroPT's modules)."""
    calls = []

    def count(module, inputs, output):  # any part of an astroPT model (blocks, patch embedding, ...)
        if type(module).__module__.endswith("modeling_astropt"):
            calls.append(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        assert load_script("linear_probe").main(argv) == 0
    finally:
        handle.remove()
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    return json.loads((output_dir / "probe_results.json").read_text()), len(calls)


def test_probe_cli_reads_the_embeddings_file_instead_of_running_the_model(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    extracted = tmp_path / "embeddings-test.parquet"
    assert load_script("extract_embeddings").main(
        ["--model", str(model), "--output", str(extracted), *dataset_flags()]
    ) == 0
    # Vectors made of the galaxy's redshift (each component a multiple of it, plus a little noise):
    # a probe that reads them fits redshift almost exactly, one that embeds the images with the
    # random tiny model does not.
    table = pq.read_table(extracted)
    redshift = table.column("redshift").to_numpy()
    rng = np.random.default_rng(0)
    vectors = redshift[:, None] * rng.uniform(0.5, 2.0, 32) + 1e-3 * rng.normal(size=(len(redshift), 32))
    known = tmp_path / "known.parquet"
    _replace_embeddings(extracted, known, vectors)

    common = ["--model", str(model), "--targets", "redshift", "--n_folds", "3", "--baselines", "pixel_pca",
              *dataset_flags()]  # fmt: skip
    from_file, file_forwards = _probe_counting_forwards(
        [*common, "--embeddings", str(known), "--output_dir", str(tmp_path / "from_file")]
    )
    embedded, embed_forwards = _probe_counting_forwards([*common, "--output_dir", str(tmp_path / "embedded")])
    assert file_forwards == 0 and embed_forwards > 0
    assert from_file["settings"]["embeddings_file"] == str(known)
    assert from_file["targets"]["redshift"]["astropt"]["r2"] > 0.99
    assert embedded["targets"]["redshift"]["astropt"]["r2"] < 0.9
    assert from_file["targets"]["redshift"]["pixel_pca"] == pytest.approx(embedded["targets"]["redshift"]["pixel_pca"])

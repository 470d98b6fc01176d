"""Embedding extraction: CLI end to end, resumability, two processes, layer/pooling flags, bad images."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from downstream_helpers import dataset_flags, load_script, run_script, save_tiny_model, tiny_split
from launching import free_port

from astropt_hf.downstream.embedding_store import read_embeddings
from astropt_hf.downstream.embeddings import (
    ExtractionOptions,
    compute_embeddings,
    extract_embeddings,
    load_backbone,
)

QUIET = ExtractionOptions(progress=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def test_split():
    return tiny_split("test")


@pytest.fixture(scope="module")
def reference(tiny_model, test_split):
    """Embeddings of every test row computed in memory, in dataset order."""
    model, processor = load_backbone(tiny_model)
    return compute_embeddings(model, test_split.dataset, processor, batch_size=7, progress=False)


def _check_complete(path, dataset, reference):
    table = read_embeddings(path)
    ids = [str(i) for i in dataset["id"]]
    assert sorted(table.ids.tolist()) == sorted(ids)  # every id, each once
    order = [ids.index(row_id) for row_id in table.ids]
    np.testing.assert_array_equal(table.columns["row"], order)
    np.testing.assert_allclose(table.embeddings, reference[order], rtol=1e-5, atol=1e-6)
    return table


def test_cli_writes_ids_embeddings_and_catalogue(tiny_model, test_split, reference, tmp_path, capsys):
    output = tmp_path / "emb.parquet"
    script = load_script("extract_embeddings")
    assert script.main(["--model", str(tiny_model), "--output", str(output), "--batch_size", "5",
                        "--rows_per_chunk", "10", *dataset_flags()]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "galaxies/s" in printed and "24 rows" in printed
    table = _check_complete(output, test_split.dataset, reference)
    # catalogue columns come along with their stored (float32) values
    np.testing.assert_array_equal(table.columns["redshift"], np.asarray(test_split.dataset["redshift"])[table.columns["row"]])
    assert pq.read_schema(output).field("redshift").type == "float"
    assert pq.ParquetFile(output).num_row_groups == 3  # one row group per chunk of 10
    assert table.metadata["pooling"] == "mean" and table.metadata["embedding_dim"] == 32
    assert table.metadata["dataset"]["dataset"] == "synthetic"
    assert not (tmp_path / "emb.parquet.parts").exists()


def test_crash_then_rerun_resumes_without_duplicates(tiny_model, test_split, reference, tmp_path, monkeypatch):
    import astropt_hf.downstream.embeddings as embeddings

    model, processor = load_backbone(tiny_model)
    output = tmp_path / "emb.parquet"
    real = embeddings.embed_pixel_batch
    calls = {"n": 0}

    def crash_on_fourth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    chunked = ExtractionOptions(batch_size=3, rows_per_chunk=6, progress=False)
    monkeypatch.setattr(embeddings, "embed_pixel_batch", crash_on_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(model, test_split.dataset, processor, output, chunked)
    parts = tmp_path / "emb.parquet.parts"
    written = sum(pq.read_metadata(p).num_rows for p in parts.glob("*.parquet"))
    assert written == 6 and not output.exists()  # one complete chunk of 6 rows; the 3 rows after it are lost
    (parts / ".half-written.parquet.tmp").write_bytes(b"PAR1 truncated")  # what a kill mid-write leaves

    monkeypatch.setattr(embeddings, "embed_pixel_batch", real)
    summary = extract_embeddings(model, test_split.dataset, processor, output, chunked)
    assert (summary.num_skipped, summary.num_new, summary.num_rows) == (6, 18, 24)
    _check_complete(output, test_split.dataset, reference)
    assert not parts.exists()

    again = extract_embeddings(model, test_split.dataset, processor, output, QUIET)
    assert (again.num_new, again.num_skipped, again.num_rows) == (0, 24, 24)
    _check_complete(output, test_split.dataset, reference)


def test_finished_file_grows_with_new_rows_and_refuses_other_settings(tiny_model, test_split, reference, tmp_path):
    model, processor = load_backbone(tiny_model)
    output = tmp_path / "emb.parquet"
    first = extract_embeddings(model, test_split.dataset.select(range(10)), processor, output, QUIET)
    assert first.num_rows == 10
    summary = extract_embeddings(model, test_split.dataset, processor, output,
                                 ExtractionOptions(rows_per_chunk=5, progress=False))  # fmt: skip
    assert (summary.num_skipped, summary.num_new, summary.num_rows) == (10, 14, 24)
    _check_complete(output, test_split.dataset, reference)
    with pytest.raises(ValueError, match="pooling"):
        extract_embeddings(model, test_split.dataset, processor, output, ExtractionOptions(pooling="last", progress=False))
    rerun = extract_embeddings(model, test_split.dataset, processor, output,
                               ExtractionOptions(pooling="last", overwrite=True, progress=False))  # fmt: skip
    assert rerun.num_new == 24


def test_layer_pooling_and_bf16_options(tiny_model, test_split, reference, tmp_path):
    model, processor = load_backbone(tiny_model)
    pixels = processor(list(test_split.dataset[:]["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.get_image_embeddings(pixels, layer="middle", pooling="mean_first_k", pooling_num_patches=4)
    output = tmp_path / "mid.parquet"
    options = ExtractionOptions(layer="middle", pooling="mean_first_k", pooling_num_patches=4, progress=False)
    extract_embeddings(model, test_split.dataset, processor, output, options)
    table = read_embeddings(output)
    np.testing.assert_allclose(table.embeddings, expected.numpy()[table.columns["row"]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(table.embeddings, reference[table.columns["row"]])
    bf16 = compute_embeddings(model, test_split.dataset, processor, bf16=True, progress=False)
    assert np.isfinite(bf16).all() and np.abs(bf16 - reference).max() < 0.1 * np.abs(reference).max()


def test_unreadable_images_are_skipped_and_counted(tiny_model, tmp_path):
    model, processor = load_backbone(tiny_model)
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(3, 16, 16)).astype(np.float32) for _ in range(5)]
    images[2] = rng.normal(size=(2, 16, 16)).astype(np.float32)  # wrong band count
    dataset = Dataset.from_dict({"image": [image.tolist() for image in images], "id": list("abcde"), "x": [1, 2, 3, 4, 5]})
    summary = extract_embeddings(model, dataset, processor, tmp_path / "e.parquet",
                                 ExtractionOptions(batch_size=2, progress=False))  # fmt: skip
    assert (summary.num_new, summary.num_unreadable, summary.num_rows) == (4, 1, 4)
    table = read_embeddings(tmp_path / "e.parquet")
    assert table.ids.tolist() == ["a", "b", "d", "e"] and table.columns["x"].tolist() == [1, 2, 4, 5]
    in_memory = compute_embeddings(model, dataset, processor, batch_size=2, progress=False)
    assert np.isnan(in_memory[2]).all() and np.isfinite(np.delete(in_memory, 2, axis=0)).all()


def test_two_processes_write_one_merged_file(tiny_model, test_split, reference, tmp_path):
    output = tmp_path / "emb.parquet"
    result = run_script(
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), "scripts/extract_embeddings.py", "--model", str(tiny_model), "--output", str(output),
        "--batch_size", "4", "--rows_per_chunk", "5", *dataset_flags(),
        env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert "on 2 process(es)" in result.stdout, result.stdout
    table = _check_complete(output, test_split.dataset, reference)
    # contiguous shares per rank, chunks merged in row order: the file is in dataset order
    assert table.columns["row"].tolist() == list(range(24))
    assert json.loads(pq.read_schema(output).metadata[b"astropt_hf.embeddings"])["embedding_dim"] == 32


def test_streamed_dataset_is_embedded_and_resumed_by_id(tiny_model, test_split, reference, tmp_path):
    model, processor = load_backbone(tiny_model)
    output = tmp_path / "emb.parquet"
    extract_embeddings(model, test_split.dataset.select(range(10)), processor, output, QUIET)
    stream = tiny_split("test", streaming=True).dataset
    summary = extract_embeddings(model, stream, processor, output, ExtractionOptions(batch_size=4, progress=False))
    assert (summary.num_skipped, summary.num_new, summary.num_rows) == (10, 14, 24)  # done rows never re-embedded
    _check_complete(output, test_split.dataset, reference)
    again = extract_embeddings(model, stream, processor, output, QUIET)
    assert (again.num_new, again.num_rows) == (0, 24)

"""Embedding map: the CLI on a small Parquet file draws the PNG; projections; bad --color_by."""

import numpy as np
import pytest
from downstream_helpers import dataset_flags, load_script, save_tiny_model

from astropt_hf.downstream.embedding_map import project_2d, spread_sample


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("map")
    model = save_tiny_model(folder / "model")
    output = folder / "emb.parquet"
    assert load_script("extract_embeddings").main(["--model", str(model), "--output", str(output), *dataset_flags()]) == 0
    return output


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_cli_draws_the_map_with_thumbnails(embeddings_file, tmp_path, capsys, method):
    png = tmp_path / "map.png"
    script = load_script("embedding_map")
    assert script.main(["--embeddings", str(embeddings_file), "--color_by", "redshift", "--output", str(png),
                        "--method", method, "--thumbnails", "6"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"({method}, 24 galaxies, 6 thumbnails)" in printed
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20000


def test_cli_points_only_and_categorical_colours(embeddings_file, tmp_path, capsys):
    from astropt_hf.plotting.embedding_map import plot_embedding_map

    png = tmp_path / "points.png"
    assert load_script("embedding_map").main(["--embeddings", str(embeddings_file), "--color_by", "bulge_fraction",
                                              "--output", str(png), "--method", "pca", "--thumbnails", "0"]) == 0  # fmt: skip
    assert "0 thumbnails" in capsys.readouterr().out and png.stat().st_size > 10000
    labels = np.array(["spiral", "elliptical", "merger", "spiral"] * 5, dtype=object)
    labels[3] = None  # a missing label is drawn as its own category, not dropped
    coords = np.random.default_rng(0).normal(size=(20, 2))
    drawn = plot_embedding_map(coords, labels, tmp_path / "labels.png", color_label="morphology", method="pca")
    assert drawn.stat().st_size > 10000


def test_bad_color_by_names_the_column_and_the_available_ones(embeddings_file, tmp_path):
    script = load_script("embedding_map")
    with pytest.raises(SystemExit, match=r"'redshfit' is not a column .*available columns: \[.*'redshift'"):
        script.main(["--embeddings", str(embeddings_file), "--color_by", "redshfit", "--output", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):  # no abbreviations of flags
        script.main(["--embeddings", str(embeddings_file), "--color", "redshift", "--output", str(tmp_path / "x.png")])


def test_projection_and_spread_sample():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 20.0])
    coords, method, details = project_2d(blobs, "pca")
    assert method == "pca" and coords.shape == (80, 2) and details["explained_variance"][0] > 0.8
    # the two blobs stay apart along the first component
    assert abs(coords[:40, 0].mean() - coords[40:, 0].mean()) > 10
    chosen = spread_sample(coords, 4)
    assert len(set(chosen.tolist())) == 4
    assert (chosen < 40).any() and (chosen >= 40).any()  # both blobs get thumbnails
    with pytest.raises(ValueError, match="method"):
        project_2d(blobs, "isomap")

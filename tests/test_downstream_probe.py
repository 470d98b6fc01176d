"""The linear-probe workflow end to end: CLI on tiny data, JSON shape, figures, reuse of extracted embeddings."""

import json

import numpy as np
import pytest
from downstream_helpers import dataset_flags, load_script, save_tiny_model, tiny_split

from astropt_hf.downstream.embeddings import ExtractionOptions, extract_embeddings, load_backbone
from astropt_hf.downstream.linear_probe import LinearProbeOptions, run_linear_probes

TARGETS = ["redshift", "mag_r", "g_r"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_cli_writes_results_for_every_target_and_feature_set(tiny_model, tmp_path, capsys):
    script = load_script("linear_probe")
    assert script.main(["--model", str(tiny_model), "--targets", ",".join(TARGETS), "--output_dir", str(tmp_path),
                        "--n_folds", "3", *dataset_flags()]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| redshift | r2 |" in printed
    results = json.loads((tmp_path / "probe_results.json").read_text())
    assert list(results["targets"]) == TARGETS
    for target in TARGETS:
        assert set(results["targets"][target]) == {"astropt", "random_init", "pixel_pca"}
        for scores in results["targets"][target].values():
            assert np.isfinite(scores["r2"]) and scores["n_samples"] == 24
    assert "sigma_nmad" in results["targets"]["redshift"]["astropt"]  # photo-z metrics for redshift only
    assert "sigma_nmad" not in results["targets"]["mag_r"]["astropt"]
    assert results["settings"]["n_folds"] == 3 and results["settings"]["feature_dims"]["pixel_pca"] <= 32
    for name in ("probe_bars.png", "pred_vs_true_astropt.png", "pred_vs_true_random_init.png", "pred_vs_true_pixel_pca.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_reused_embeddings_give_the_same_probe_as_computing_them(tiny_model, tmp_path):
    source = tiny_split("test")
    model, processor = load_backbone(tiny_model)
    # Extracted in a shuffled row order: the workflow must match them to the dataset by id.
    shuffled = source.dataset.select(np.random.default_rng(0).permutation(len(source.dataset)))
    extract_embeddings(model, shuffled, processor, tmp_path / "emb.parquet", ExtractionOptions(progress=False))
    computed = LinearProbeOptions(baselines=(), n_folds=3, progress=False)
    from_file = LinearProbeOptions(embeddings_path=tmp_path / "emb.parquet", baselines=(), n_folds=3, progress=False)
    direct = run_linear_probes(tiny_model, source.dataset, ["redshift"], tmp_path / "a", computed)
    reused = run_linear_probes(tiny_model, source.dataset, ["redshift"], tmp_path / "b", from_file)
    a = direct.suite.results["targets"]["redshift"]["astropt"]
    b = reused.suite.results["targets"]["redshift"]["astropt"]
    assert a["r2"] == pytest.approx(b["r2"], abs=1e-5) and a["mae"] == pytest.approx(b["mae"], rel=1e-4)
    with pytest.raises(ValueError, match="have no embedding"):
        run_linear_probes(tiny_model, tiny_split("train").dataset, ["redshift"], tmp_path / "c", from_file)


def test_unknown_target_or_baseline_fails_clearly(tiny_model, tmp_path):
    dataset = tiny_split("test").dataset
    with pytest.raises(ValueError, match="sfr"):
        run_linear_probes(tiny_model, dataset, ["sfr"], tmp_path)
    with pytest.raises(ValueError, match="umap"):
        run_linear_probes(tiny_model, dataset, ["redshift"], tmp_path, LinearProbeOptions(baselines=["umap"]))

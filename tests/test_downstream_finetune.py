"""Fine-tuning under transformers.Trainer: regression and classification heads, frozen/full/LoRA modes,
checkpoints that reload (as remote code) with the same predictions, and the model card."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from downstream_helpers import (
    dataset_flags,
    load_script,
    reload_classifier_as_remote_code,
    save_tiny_model,
    tiny_split,
)
from safetensors.torch import load_file

from astropt_hf.downstream.finetuning import FinetuneArguments, finetune


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), patch_norm="per_image")


@pytest.fixture(scope="module")
def splits():
    return tiny_split("train"), tiny_split("test")


def _reloaded_predictions(folder, dataset) -> np.ndarray:
    """Logits of the saved checkpoint on `dataset`, loaded as remote code in a fresh process."""
    return np.asarray(reload_classifier_as_remote_code(folder, np.stack(dataset[:]["image"]), folder)["logits"])


def test_full_regression_cli_saves_a_reloadable_checkpoint_in_target_units(tiny_model, splits, tmp_path, capfd):
    output = tmp_path / "ft"
    script = load_script("finetune")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert script.main(["--model", str(tiny_model), "--target", "redshift", "--output_dir", str(output),
                            "--max_steps", "8", "--batch_size", "8", "--eval_steps", "4", "--logging_steps", "2",
                            *dataset_flags()]) == 0  # fmt: skip
    printed = capfd.readouterr()
    assert "eval_r2" in printed.out
    # one progress bar, no printed Trainer log dictionaries, no pin_memory warning on a CPU
    for line in (printed.out + printed.err).replace("\r", "\n").splitlines():
        assert not re.match(r"\s*\{'(loss|eval_loss|train_runtime)'", line), line
    assert "fine-tuning: 100%" in printed.err
    assert not any("pin_memory" in str(warning.message) for warning in caught)
    logged = [json.loads(line) for line in (output / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged if "loss" in entry] == [2, 4, 6, 8]
    assert sum("eval_loss" in entry for entry in logged) == 2 and "train_runtime" in logged[-1]
    results = json.loads((output / "finetune_results.json").read_text())
    assert results["task"] == "regression" and results["mode"] == "full"
    for key in ("eval_loss", "eval_r2", "eval_mae", "eval_sigma_nmad", "eval_outlier_fraction"):
        assert np.isfinite(results["metrics"][key]), key
    # evaluations during training were logged with their loss
    assert sum("eval_loss" in entry for entry in results["log_history"]) >= 2
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    truth = np.asarray(splits[0].dataset["redshift"], dtype=np.float64)
    assert config["regression_target"]["mean"] == pytest.approx(truth.mean())
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_astropt")
    card = (output / "README.md").read_text()
    assert "redshift" in card and f"{results['metrics']['eval_r2']:.4g}" in card and "$" not in card.split("```")[0]
    from PIL import Image

    width, height = Image.open(output / "pred_vs_true.png").size
    assert height > 1.2 * width  # the hexbin with the bias panel under it
    # the redshift bias, overall and in bins of true z, of the same test predictions
    bias = results["redshift_bias"]
    assert bias["overall"]["n"] == len(splits[1].dataset) == sum(b["n"] for b in bias["bins"])
    assert "median Δz/(1+z)" in card

    # The reloaded checkpoint predicts in redshift units: its R² equals the reported one.
    from astropt_hf.metrics import compute_regression_metrics

    test = splits[1].dataset
    predictions = _reloaded_predictions(output, test)[:, 0]
    reloaded = compute_regression_metrics(predictions, np.asarray(test["redshift"]), photo_z=True)
    assert reloaded["r2"] == pytest.approx(results["metrics"]["eval_r2"], abs=1e-4)
    assert reloaded["mae"] == pytest.approx(results["metrics"]["eval_mae"], rel=1e-4)
    true = np.asarray(test["redshift"])
    errors = (predictions - true) / (1 + true)
    assert bias["overall"]["median"] == pytest.approx(float(np.median(errors)), abs=1e-5)


def _reloaded_in_process(folder, dataset) -> np.ndarray:
    """Logits of the saved checkpoint through the Auto classes, in this process (cheaper than remote code)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        return model(pixel_values=processor(list(dataset[:]["image"]), return_tensors="pt")["pixel_values"]).logits.numpy()


def _morphology(split):
    """A string label column for classification: bulge- or disk-dominated."""
    labels = ["bulge" if b > 0.5 else "disk" for b in split.dataset["bulge_fraction"]]
    return split.dataset.add_column("morphology", labels)


def test_frozen_classification_trains_only_the_head(tiny_model, splits, tmp_path):
    train, test = (_morphology(split) for split in splits)
    options = FinetuneArguments(model=tiny_model, target="morphology", output_dir=tmp_path / "cls", mode="frozen",
                                max_steps=6, batch_size=8, logging_steps=2)  # fmt: skip
    result = finetune(options, train, test)
    assert result.task == "classification" and set(result.id2label.values()) == {"bulge", "disk"}
    assert {"eval_loss", "eval_accuracy", "eval_f1_macro"} <= set(result.metrics)
    assert result.num_trainable_parameters == 32 * 2 + 2  # the linear head only
    saved = load_file(tmp_path / "cls" / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    for name, tensor in saved.items():
        if name.startswith("astropt."):
            torch.testing.assert_close(tensor, base[name], rtol=0, atol=0)  # backbone untouched
    logits = _reloaded_in_process(tmp_path / "cls", test)
    np.testing.assert_array_equal(logits.argmax(axis=1), result.eval_predictions)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification" and config["id2label"] == {"0": "bulge", "1": "disk"}


def test_lora_mode_merges_adapters_into_a_plain_checkpoint(tiny_model, splits, tmp_path):
    pytest.importorskip("peft")
    train, test = splits
    options = FinetuneArguments(model=tiny_model, target="mag_r", output_dir=tmp_path / "lora", mode="lora",
                                max_steps=6, batch_size=8, lora_r=2, lora_alpha=4, learning_rate=5e-2)  # fmt: skip
    result = finetune(options, train.dataset, test.dataset)
    assert result.num_trainable_parameters < result.num_parameters / 3
    saved = load_file(tmp_path / "lora" / "model.safetensors")
    assert not any("lora" in name or "base_layer" in name for name in saved)
    base = load_file(tiny_model / "model.safetensors")
    changed = [n for n in ("astropt.layers.0.attention.qkv.weight", "astropt.layers.1.mlp.fc1.weight")
               if not torch.equal(saved[n], base[n])]  # fmt: skip
    assert changed, "merged LoRA updates should change the adapted projections"
    torch.testing.assert_close(saved["astropt.embeddings.position_embeddings.weight"],
                               base["astropt.embeddings.position_embeddings.weight"])  # fmt: skip
    predictions = _reloaded_in_process(tmp_path / "lora", test.dataset)[:, 0]
    np.testing.assert_allclose(predictions, result.eval_predictions, rtol=1e-4, atol=1e-4)


def test_bad_target_and_mode_fail_clearly(tiny_model, splits, tmp_path):
    train, test = splits
    with pytest.raises(ValueError, match="no column 'colour'"):
        finetune(FinetuneArguments(model=tiny_model, target="colour", output_dir=tmp_path / "x"),
                 train.dataset, test.dataset)
    with pytest.raises(ValueError, match="mode='partial'"):
        finetune(FinetuneArguments(model=tiny_model, target="redshift", output_dir=tmp_path / "x", mode="partial"),
                 train.dataset, test.dataset)


def test_probe_head_init_equals_the_ridge_probe_of_the_training_embeddings(tiny_model, splits, tmp_path):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from astropt_hf.downstream.embeddings import compute_embeddings, load_backbone
    from astropt_hf.downstream.probes import DEFAULT_ALPHAS

    train, test = splits
    # learning rate 0: the saved head is exactly the probe the fine-tuning started from
    options = FinetuneArguments(model=tiny_model, target="g_r", output_dir=tmp_path / "lp", mode="frozen", max_steps=1,
                                batch_size=8, learning_rate=0.0, head_init="probe")  # fmt: skip
    result = finetune(options, train.dataset, test.dataset)
    backbone, processor = load_backbone(tiny_model)
    features = compute_embeddings(backbone, train.dataset, processor, progress=False)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(DEFAULT_ALPHAS)))
    ridge.fit(features, np.asarray(train.dataset["g_r"], dtype=np.float64))
    expected = ridge.predict(compute_embeddings(backbone, test.dataset, processor, progress=False))
    np.testing.assert_allclose(result.eval_predictions, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_reloaded_in_process(tmp_path / "lp", test.dataset)[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_dihedral_augmentation_gives_the_eight_orientations_and_refuses_position_angles(tiny_model, splits, tmp_path):
    from astropt_hf.downstream.finetune_data import random_dihedral

    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    orientations = {
        tuple(torch.rot90(image[0].flip(-1) if flip else image[0], k, dims=(-2, -1)).flatten().tolist())
        for k in range(4) for flip in (False, True)
    }  # fmt: skip
    seen = {tuple(out.flatten().tolist()) for out in random_dihedral(image.repeat(200, 1, 1, 1), torch.Generator().manual_seed(0))}
    assert seen == orientations and len(orientations) == 8
    train, test = splits
    with pytest.raises(ValueError, match="position_angle"):
        finetune(FinetuneArguments(model=tiny_model, target="position_angle", output_dir=tmp_path / "pa",
                                   augment="dihedral"), train.dataset, test.dataset)


def test_log1p_target_transform_round_trips_and_the_checkpoint_outputs_log1p(tiny_model, splits, tmp_path):
    from astropt_hf.downstream.finetune_data import RegressionTarget

    redshifts = np.array([0.0, 0.05, 0.3, 1.2, 3.0])
    target = RegressionTarget.fit("redshift", redshifts, transform="log1p")
    assert target.mean == pytest.approx(np.log1p(redshifts).mean()) and target.std == pytest.approx(np.log1p(redshifts).std())
    np.testing.assert_allclose(target.restore(target.standardise(redshifts)), redshifts, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(target.standardise(redshifts), (np.log1p(redshifts) - target.mean) / target.std)
    with pytest.raises(ValueError, match="above -1"):
        RegressionTarget.fit("redshift", [-1.0, 0.5], transform="log1p")

    train, test = splits
    options = FinetuneArguments(model=tiny_model, target="redshift", output_dir=tmp_path / "log", max_steps=4,
                                batch_size=8, target_transform="log1p", sample_weighting="inverse_density")  # fmt: skip
    result = finetune(options, train.dataset, test.dataset)
    assert result.regression_target["transform"] == "log1p" and result.sample_weighting == "inverse_density"
    # the saved head outputs log(1 + z); the reported predictions are z
    outputs = _reloaded_in_process(tmp_path / "log", test.dataset)[:, 0]
    np.testing.assert_allclose(np.expm1(outputs), result.eval_predictions, rtol=1e-4, atol=1e-5)
    assert "expm1()" in (tmp_path / "log" / "README.md").read_text()


def test_inverse_density_weights_are_inverse_to_the_histogram_and_average_one():
    from astropt_hf.downstream.finetune_data import InverseDensityWeights

    values = np.array([0.05] * 6 + [0.15] * 3 + [0.25] * 1)  # 6, 3 and 1 galaxies in three bins
    weights = InverseDensityWeights.fit(values, bins=3, max_weight=10.0)
    per_galaxy = weights(values)
    assert per_galaxy.mean() == pytest.approx(1.0)
    # 1/6 : 1/3 : 1 scaled to mean 1 over the 10 galaxies: every bin holds the same total weight, 10/3
    np.testing.assert_allclose(weights.bin_weights, [10 / 18, 10 / 9, 10 / 3])
    np.testing.assert_allclose([per_galaxy[:6].sum(), per_galaxy[6:9].sum(), per_galaxy[9:].sum()], [10 / 3] * 3)
    # out-of-range values take the end bins' weights
    np.testing.assert_allclose(weights([-1.0, 5.0]), [10 / 18, 10 / 3])
    # a cap holds, and the mean stays 1
    capped = InverseDensityWeights.fit(values, bins=3, max_weight=2.0)
    assert max(capped.bin_weights) == pytest.approx(2.0) and capped(values).mean() == pytest.approx(1.0)
    np.testing.assert_allclose(capped.bin_weights[1] / capped.bin_weights[0], 2.0)  # uncapped bins keep 1/count


def test_weighted_loss_equals_a_hand_computation_on_a_tiny_batch(tiny_model, tmp_path):
    from transformers import AutoModelForImageClassification, TrainingArguments

    from astropt_hf.downstream.finetune_trainer import finetune_trainer_class, weighted_mse_loss

    assert weighted_mse_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0]),
                             torch.tensor([0.5, 1.0, 1.5])).item() == pytest.approx((0.5 * 1 + 0 + 1.5 * 9) / 3)
    model = AutoModelForImageClassification.from_pretrained(tiny_model, num_labels=1, problem_type="regression").eval()
    trainer = finetune_trainer_class()(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    pixel_values = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels, weights = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.2, 1.0, 1.8])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values).logits[:, 0]
        loss = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels, "sample_weights": weights})
        plain = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels})
    by_hand = sum(w * (o - y) ** 2 for w, o, y in zip(weights.tolist(), outputs.tolist(), labels.tolist())) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert plain.item() == pytest.approx(float(((outputs - labels) ** 2).mean()), rel=1e-5)  # unweighted: the MSE


def test_transform_and_weighting_need_a_linear_regression(tiny_model, splits, tmp_path):
    train, test = (_morphology(split) for split in splits)
    with pytest.raises(ValueError, match="sample_weighting='inverse_density' needs a regression"):
        finetune(FinetuneArguments(model=tiny_model, target="morphology", output_dir=tmp_path / "x",
                                   sample_weighting="inverse_density"), train, test)
    with pytest.raises(ValueError, match="target_transform='log1p' needs a regression with --head linear"):
        finetune(FinetuneArguments(model=tiny_model, target="redshift", output_dir=tmp_path / "x", head="pdf",
                                   target_transform="log1p"), train, test)

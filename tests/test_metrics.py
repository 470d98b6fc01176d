"""The shipped evaluate metric modules against values worked out by hand from their definitions."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from astropt_hf.metrics import (
    AVAILABLE_METRICS,
    METRICS_DIR,
    compute_classification_metrics,
    compute_regression_metrics,
    load_metric,
    make_trainer_compute_metrics,
)

# A 5-galaxy regression example used by several tests.
TRUE = [1.0, 2.0, 3.0, 4.0, 5.0]
PRED = [1.5, 2.0, 2.5, 4.0, 6.0]


def test_r2_by_hand():
    # mean(true) = 3 -> SS_tot = 4 + 1 + 0 + 1 + 4 = 10; residuals -0.5, 0, 0.5, 0, -1 -> SS_res = 1.5
    result = load_metric("r2").compute(predictions=PRED, references=TRUE)
    assert result["r2"] == pytest.approx(1.0 - 1.5 / 10.0)


def test_r2_edge_cases():
    r2 = load_metric("r2")
    assert r2.compute(predictions=TRUE, references=TRUE)["r2"] == pytest.approx(1.0)
    # Predicting the mean scores exactly 0; any other constant scores below 0.
    assert r2.compute(predictions=[3.0] * 5, references=TRUE)["r2"] == pytest.approx(0.0)
    assert r2.compute(predictions=[10.0] * 5, references=TRUE)["r2"] < 0.0
    # Anti-correlated predictions are worse than the mean.
    assert r2.compute(predictions=TRUE[::-1], references=TRUE)["r2"] < 0.0


def test_r2_matches_sklearn_on_random_data():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    true = rng.normal(size=50)
    pred = true + rng.normal(scale=0.5, size=50)
    assert load_metric("r2").compute(predictions=pred, references=true)["r2"] == pytest.approx(
        r2_score(true, pred)
    )


def test_mae_by_hand():
    # |errors| = 0.5, 0, 0.5, 0, 1 -> 2 / 5
    assert load_metric("mae").compute(predictions=PRED, references=TRUE)["mae"] == pytest.approx(0.4)


Z_TRUE = [0.0, 0.5, 1.0, 1.5, 3.0]
Z_PRED = [0.1, 0.5, 0.6, 1.6, 3.4]


def test_sigma_nmad_by_hand():
    # dz = 0.1, 0, -0.4, 0.1, 0.4; median(dz) = 0.1; |dz - 0.1| = 0, 0.1, 0.5, 0, 0.3
    # divided by (1 + z): 0, 0.1/1.5, 0.25, 0, 0.075 -> sorted 0, 0, 0.0667, 0.075, 0.25 -> median 0.1/1.5
    result = load_metric("sigma_nmad").compute(predictions=Z_PRED, references=Z_TRUE)
    assert result["sigma_nmad"] == pytest.approx(1.48 * 0.1 / 1.5)
    scaled = load_metric("sigma_nmad").compute(predictions=Z_PRED, references=Z_TRUE, scale=1.4826)
    assert scaled["sigma_nmad"] == pytest.approx(1.4826 * 0.1 / 1.5)


def test_sigma_nmad_ignores_a_constant_bias():
    biased = [z + 0.2 for z in Z_TRUE]
    # dz is 0.2 everywhere, so dz - median(dz) = 0.
    assert load_metric("sigma_nmad").compute(predictions=biased, references=Z_TRUE)["sigma_nmad"] == 0.0


def test_outlier_fraction_by_hand():
    # |dz| / (1 + z) = 0.1, 0, 0.2, 0.04, 0.1
    metric = load_metric("outlier_fraction")
    assert metric.compute(predictions=Z_PRED, references=Z_TRUE)["outlier_fraction"] == pytest.approx(1 / 5)
    lowered = metric.compute(predictions=Z_PRED, references=Z_TRUE, threshold=0.09)
    assert lowered["outlier_fraction"] == pytest.approx(3 / 5)


def test_redshift_metrics_reject_impossible_redshifts():
    with pytest.raises(ValueError, match="> -1"):
        load_metric("sigma_nmad").compute(predictions=[0.1, 0.2], references=[-1.0, 0.2])


LABEL_PRED = [0, 1, 2, 2, 1]
LABEL_TRUE = [0, 1, 1, 2, 2]


def test_accuracy_by_hand():
    assert load_metric("accuracy").compute(predictions=LABEL_PRED, references=LABEL_TRUE)["accuracy"] == 0.6


def test_f1_averages_by_hand():
    f1 = load_metric("f1")
    # class 0: TP 1, FP 0, FN 0 -> 1;  class 1: TP 1 (i=1), FP 1 (i=4), FN 1 (i=2) -> 2/4;
    # class 2: TP 1 (i=3), FP 1 (i=2), FN 1 (i=4) -> 2/4
    macro = f1.compute(predictions=LABEL_PRED, references=LABEL_TRUE, average="macro")["f1"]
    assert macro == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    # pooled: TP 3, FP 2, FN 2 -> 6 / 10 (equals the accuracy)
    micro = f1.compute(predictions=LABEL_PRED, references=LABEL_TRUE, average="micro")["f1"]
    assert micro == pytest.approx(0.6)
    # supports 1, 2, 2 -> (1 * 1 + 2 * 0.5 + 2 * 0.5) / 5
    weighted = f1.compute(predictions=LABEL_PRED, references=LABEL_TRUE, average="weighted")["f1"]
    assert weighted == pytest.approx(3.0 / 5.0)
    # binary, class 1 positive: TP 2, FP 1, FN 1 -> 4 / 6
    binary = f1.compute(predictions=[1, 1, 0, 0, 1], references=[1, 0, 0, 1, 1], average="binary")["f1"]
    assert binary == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="binary"):
        f1.compute(predictions=LABEL_PRED, references=LABEL_TRUE, average="binary")


def test_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    true, pred = rng.integers(0, 4, size=60), rng.integers(0, 4, size=60)
    for average in ("macro", "micro", "weighted"):
        ours = load_metric("f1").compute(predictions=pred, references=true, average=average)["f1"]
        assert ours == pytest.approx(f1_score(true, pred, average=average))


def test_compute_regression_metrics_keys_and_values():
    plain = compute_regression_metrics(np.array(PRED)[:, None], TRUE)  # (N, 1) is accepted
    assert set(plain) == {"r2", "mae"}
    assert plain["mae"] == pytest.approx(0.4)
    photo_z = compute_regression_metrics(Z_PRED, Z_TRUE, photo_z=True, outlier_threshold=0.09)
    assert set(photo_z) == {"r2", "mae", "sigma_nmad", "outlier_fraction"}
    assert photo_z["outlier_fraction"] == pytest.approx(3 / 5)
    assert all(isinstance(value, float) for value in photo_z.values())


def test_compute_regression_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        compute_regression_metrics([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="length"):
        compute_regression_metrics([1.0, 2.0], [1.0, 2.0, 3.0])


def test_compute_classification_metrics_with_string_labels():
    names = np.array(["elliptical", "spiral", "merger"])
    result = compute_classification_metrics(names[LABEL_PRED], names[LABEL_TRUE])
    assert result == pytest.approx({"accuracy": 0.6, "f1_macro": 2 / 3})


def test_trainer_compute_metrics():
    from transformers import EvalPrediction

    logits = np.eye(3)[LABEL_PRED] * 5.0
    classification = make_trainer_compute_metrics("classification")
    assert (
        classification(EvalPrediction(predictions=logits, label_ids=np.array(LABEL_TRUE)))["accuracy"] == 0.6
    )
    regression = make_trainer_compute_metrics("regression", photo_z=True)
    result = regression(EvalPrediction(predictions=np.array(Z_PRED)[:, None], label_ids=np.array(Z_TRUE)))
    assert result["sigma_nmad"] == pytest.approx(1.48 * 0.1 / 1.5)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available"):
        load_metric("bleu")


def test_metrics_load_offline_by_path_without_writing_into_the_repo(tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1, an unreachable hub and an empty cache loads every module."""
    before = sorted(
        p.relative_to(METRICS_DIR) for p in METRICS_DIR.rglob("*") if "__pycache__" not in p.parts
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens there: any network attempt would fail
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    code = (
        "from astropt_hf.metrics import AVAILABLE_METRICS, load_metric\n"
        "for name in AVAILABLE_METRICS:\n"
        "    kwargs = {'average': 'macro'} if name == 'f1' else {}\n"
        "    print(name, load_metric(name).compute(predictions=[1, 2, 3], references=[1, 2, 4], **kwargs))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(completed.stdout.strip().splitlines()) == len(AVAILABLE_METRICS)
    after = sorted(p.relative_to(METRICS_DIR) for p in METRICS_DIR.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
    # Nothing lands in the working directory either: only the two caches we pointed evaluate at.
    assert {p.name for p in tmp_path.iterdir()} <= {"hf_home", "modules"}
    # evaluate copied the scripts into its module cache, which is where they should go.
    assert any(Path(tmp_path / "modules").rglob("r2.py"))


@pytest.mark.parametrize("name", AVAILABLE_METRICS)
def test_each_metric_documents_an_example_that_holds(name):
    metric = load_metric(name)
    call, result = metric.example
    assert f"metric.compute({call})" in metric.inputs_description
    keywords = ast.parse(f"compute({call})", mode="eval").body.keywords
    inputs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in keywords}
    assert metric.compute(**inputs) == pytest.approx(ast.literal_eval(result))


def test_redshift_bias_by_hand():
    from astropt_hf.metrics import compute_redshift_bias

    true = [0.0, 0.1, 0.3, 1.0]
    pred = [0.1, 0.1, 0.17, 0.8]
    # dz/(1+z): 0.1/1 = 0.1, 0, -0.13/1.3 = -0.1, -0.2/2 = -0.1
    result = compute_redshift_bias(pred, true, edges=[0.0, 0.2, 1.0])
    assert result["overall"] == {"n": 4, "mean": pytest.approx(-0.025), "median": pytest.approx(-0.05)}
    low, high = result["bins"]
    assert (low["z_lo"], low["z_hi"], low["n"]) == (0.0, 0.2, 2)
    assert low["mean"] == pytest.approx(0.05) and low["median"] == pytest.approx(0.05)
    assert high["n"] == 2 and high["mean"] == pytest.approx(-0.1) and high["median"] == pytest.approx(-0.1)
    # the last bin holds its upper edge; a bin without galaxies says so
    empty = compute_redshift_bias(pred, true, edges=[0.0, 0.5, 0.9, 1.0])["bins"]
    assert [b["n"] for b in empty] == [3, 0, 1] and np.isnan(empty[1]["median"])


def test_redshift_bias_bins_merge_sparse_tails():
    from astropt_hf.metrics import bias_bin_edges, compute_redshift_bias

    rng = np.random.default_rng(0)
    # 100 galaxies in each of 0-0.1, 0.1-0.2 and 0.2-0.3, 12 in 0.3-0.4 and 8 in 0.4-0.5: the two sparse
    # tail bins become one 0.3-0.5 bin of 20
    true = np.concatenate([rng.uniform(lo, lo + 0.1, n) for lo, n in ((0.0, 100), (0.1, 100), (0.2, 100),
                                                                      (0.3, 12), (0.4, 8))])  # fmt: skip
    true[-1] = 0.5
    np.testing.assert_allclose(bias_bin_edges(true, width=0.1, min_count=20), [0.0, 0.1, 0.2, 0.3, 0.5])
    bins = compute_redshift_bias(true, true)["bins"]
    assert [b["n"] for b in bins] == [100, 100, 100, 20] and all(b["median"] == 0 for b in bins)
    # a sparse bin in the middle joins its smaller neighbour
    middle = np.concatenate([np.full(30, 0.05), np.full(5, 0.15), np.full(25, 0.25), np.full(40, 0.35)])
    np.testing.assert_allclose(bias_bin_edges(middle, width=0.1, min_count=20), [0.0, 0.1, 0.3, 0.4])
    # fewer values than min_count: one bin
    assert len(bias_bin_edges([0.1, 0.2, 0.35], min_count=20)) == 2
    with pytest.raises(ValueError, match="increasing"):
        compute_redshift_bias(true, true, edges=[0.3, 0.1])

"""The fine-tuning head's linear algebra: a head started at the linear probe of the training embeddings
(LP-FT), and a regression head rescaled so the saved model predicts in the target's own units."""

from __future__ import annotations

import numpy as np
import torch

from astropt_hf.downstream.finetune_data import RegressionTarget, label_key


def fit_linear_head(features: np.ndarray, labels: np.ndarray, task: str, num_labels: int):
    """Weights (num_labels, D) and bias of a linear probe fitted on raw embeddings.

    The probe is fitted on standardised features (as the probes in `astropt_hf.downstream.probes`: ridge with its
    strength chosen by leave-one-out, or logistic regression) and the standardisation is folded into
    the weights, so the head applies to the embeddings as they come out of the backbone.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.preprocessing import StandardScaler

    from astropt_hf.downstream.probes import DEFAULT_ALPHAS

    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    if task == "regression":
        probe = RidgeCV(alphas=np.asarray(DEFAULT_ALPHAS)).fit(scaled, labels)
        weight, bias = probe.coef_.reshape(1, -1), np.atleast_1d(probe.intercept_)
    else:
        probe = LogisticRegression(max_iter=1000).fit(scaled, labels)
        weight, bias = np.zeros((num_labels, features.shape[1])), np.zeros(num_labels)
        if len(probe.classes_) == 2:  # one logit z: softmax over [0, z] gives the same probabilities
            weight[probe.classes_[1]], bias[probe.classes_[1]] = probe.coef_[0], probe.intercept_[0]
        else:
            weight[probe.classes_], bias[probe.classes_] = probe.coef_, probe.intercept_
    weight = weight / scaler.scale_
    bias = bias - weight @ scaler.mean_
    return torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)


def init_head_from_probe(model, processor, dataset, image_column: str, target: str, task: str,
                          regression: RegressionTarget | None, label2id: dict | None, batch_size: int) -> None:
    """Set the classifier to the linear probe of the training rows' embeddings (LP-FT).

    A randomly initialised head on a frozen backbone trains slowly: the pooled embeddings vary across
    galaxies by far less than their offsets, so the useful weights are large. Starting from the probe
    makes `frozen` mode at least as good as the probe (the default there). For `full` and `lora` it is
    the LP-FT option (Kumar et al. 2022, "Fine-tuning can distort pretrained features"), not the default:
    on the demo galaxies the probe head's large weights made the first backbone updates swing the output.
    """
    from astropt_hf.downstream.embeddings import compute_embeddings

    features = compute_embeddings(model.astropt, dataset, processor, batch_size=max(batch_size, 64),
                                  image_column=image_column, progress=False)  # fmt: skip
    readable = np.isfinite(features).all(axis=1)
    values = [v for v, ok in zip(dataset[target], readable) if ok]
    if task == "regression":
        labels = regression.standardise(values)
    else:
        labels = np.asarray([label2id[label_key(v)] for v in values])
    weight, bias = fit_linear_head(features[readable], labels, task, model.config.num_labels)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)


def bake_standardisation(model, regression: RegressionTarget) -> None:
    """Rescale the head so the model outputs the target in its own units: y = std * (W e + b) + mean."""
    head = model.classifier
    with torch.no_grad():
        head.weight.mul_(regression.std)
        head.bias.mul_(regression.std).add_(regression.mean)


__all__ = ["bake_standardisation", "fit_linear_head", "init_head_from_probe"]

"""Model cards: shipped templates, hub front matter that parses back, and every placeholder filled."""

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard, metadata_load

from astropt_hf.conversion.convert import ConversionReport
from astropt_hf.conversion.model_card import render_model_card
from astropt_hf.downstream.finetuning import FinetuneResult
from astropt_hf.model_cards import build_card, card_data, read_template
from astropt_hf.model_cards.finetuned import render_finetuned_card
from astropt_hf.training.arguments import PretrainArguments
from astropt_hf.training.card import write_model_card

SUMMARY = {"steps": 40, "tokens_seen": 12345, "final_train_loss": 0.21, "final_val_loss": 0.2,
           "first_val_loss": 0.3, "num_parameters": 1000, "wall_seconds": 75.0}  # fmt: skip


def test_templates_ship_inside_the_package():
    folder = resources.files("astropt_hf") / "model_cards"
    for name in ("pretrained", "converted", "finetuned"):
        assert (folder / f"{name}.md").is_file()
        assert read_template(name).startswith("---\n{{ card_data }}\n---\n")


@pytest.mark.parametrize(("dataset", "datasets"), [("synthetic", None), ("Smith42/galaxies", ["Smith42/galaxies"])])
def test_pretrained_card_parses_back_with_its_front_matter(tmp_path, dataset, datasets):
    args = PretrainArguments(dataset=dataset)
    path = write_model_card(tmp_path / "README.md", args, args.model_config(), SUMMARY, "me/astropt-demo")
    card = ModelCard.load(path)
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert {"astronomy", "astropt", "self-supervised", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == datasets
    assert "| optimizer steps | 40 |" in card.text and "| tokens (patches) seen | 12,345 |" in card.text
    assert "{{" not in card.text


def _report(notes=()):
    config = {"embedding_layer": "middle", "image_size": 32, "patch_size": 16, "num_channels": 3,
              "num_hidden_layers": 4, "num_attention_heads": 2, "hidden_size": 32, "patch_embedding": "aim",
              "pooling_num_patches": 4}  # fmt: skip
    return ConversionReport(
        source="/somewhere/ckpt.pt", detected_format="v2", format_description="v2.x", had_compile_prefix=False,
        num_parameters=1_234_567, image_size=32, image_size_source="the checkpoint's config", config=config,
        notes=list(notes), converter_version="0.1.0",
    )  # fmt: skip


def test_converted_card_parses_back_without_a_licence(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(render_model_card(_report(notes=["kept the spiral order"]), "me/converted"))
    metadata = metadata_load(path)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-feature-extraction"
    assert "converted" in metadata["tags"] and "license" not in metadata  # the source checkpoint's licence applies
    text = ModelCard.load(path).text
    assert "| parameters | 1.23M (1,234,567) |" in text and "- kept the spiral order" in text
    assert "{{" not in text and "$" not in text
    assert "## Notes" not in render_model_card(_report(), "me/converted")


def _finetune_result(task):
    return FinetuneResult(
        output_dir=Path("unused"), target="redshift" if task == "regression" else "morphology", task=task,
        mode="frozen", metrics={"eval_loss": 0.5, "eval_r2": 0.8123, "eval_mae": 0.05, "eval_runtime": 1.0,
                                "eval_samples_per_second": 30.0},
        num_trainable_parameters=33, num_parameters=12_345, train_seconds=90.0, max_steps=50, learning_rate=3e-3,
        regression_target={"name": "redshift", "mean": 0.3, "std": 0.1} if task == "regression" else None,
        id2label=None if task == "regression" else {0: "disk", 1: "elliptical"}, eval_predictions=np.zeros(3),
    )  # fmt: skip


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_finetuned_card_names_base_model_and_metrics(tmp_path, task):
    config = PretrainArguments().model_config()
    path = tmp_path / "README.md"
    path.write_text(render_finetuned_card(_finetune_result(task), "runs/astropt-demo", config, "synthetic [train]"))
    card = ModelCard.load(path)
    assert card.data.base_model == "runs/astropt-demo" and card.data.pipeline_tag == "image-classification"
    assert card.data.metrics == ["r2", "mae"]  # the loss and the trainer's timings are not metrics
    assert "fine-tuned" in card.data.tags
    assert "| r2 | 0.8123 |" in card.text and "runtime" not in card.text.split("```json")[0]
    assert ("mean 0.3, std 0.1" in card.text) == (task == "regression")
    assert ("1: `elliptical`" in card.text) == (task == "classification")
    assert "{{" not in card.text


def test_a_placeholder_without_a_value_is_an_error():
    with pytest.raises(KeyError, match="forgotten"):
        build_card("---\n{{ card_data }}\n---\n{{ title }} {{ forgotten }}\n", card_data("image-classification"),
                   {"title": "x"})  # fmt: skip
    card = build_card("---\n{{ card_data }}\n---\n# {{ title }}\n", card_data("image-classification"), {"title": "x"})
    assert str(card).endswith("\n---\n# x\n")  # the template's final newline survives jinja


@pytest.mark.parametrize(
    ("overrides", "facts"),
    [
        ({}, ["| objective | next-patch regression |", "| attention pattern | causal (each patch sees the ones before it) |",
              "trained to regress the next patch\n(", "`.generate_patches`"]),
        ({"attention_pattern": "prefix"}, ["| attention pattern | prefix (bidirectional inside a prefix",
                                           "regress the next patch after a bidirectional prefix"]),
        ({"objective": "masked_patch", "attention_pattern": "bidirectional", "mask_ratio": 0.75, "norm_pix_loss": True},
         ["| objective | masked patches, mask ratio 0.75, norm_pix_loss on |", "replaces 75% of the patch embeddings",
          "| attention pattern | bidirectional (every patch sees every patch) |", "`fill_masked_patches`"]),
    ],
)  # fmt: skip
def test_pretrained_card_records_objective_and_attention_pattern(tmp_path, overrides, facts):
    from astropt_hf import AstroPTConfig

    args = PretrainArguments()
    config = AstroPTConfig(**{**args.model_config().to_dict(), **overrides})
    text = ModelCard.load(write_model_card(tmp_path / "README.md", args, config, SUMMARY, "me/x")).text
    for fact in facts:
        assert fact in text
    assert ("next patch" in text) == ("objective" not in overrides)


def test_converted_card_records_objective_and_prefix_warning():
    report = _report()
    report.config.update(objective="masked_patch", attention_pattern="bidirectional", mask_ratio=0.5, pooling="mean")
    report.upstream_settings = {"objective": "mae", "attn_type": "prefix"}
    report.warnings = ["ckpt.pt: upstream never applied its prefix mask"]
    text = render_model_card(report, "me/converted")
    assert "| objective | masked patches (upstream `objective='mae'`), mask ratio 0.5, norm_pix_loss off |" in text
    assert "| attention | bidirectional (upstream `attn_type='prefix'`, whose prefix mask upstream never applied" in text
    assert "mean over all sequence positions" in text and "## Warning\n\n- ckpt.pt: upstream never applied" in text
    assert "predicts patch `t + 1`" not in text and "`bool_masked_pos`" in text
    causal = render_model_card(_report(), "me/converted")
    assert "| objective | next-patch regression (upstream `objective='ar'`) |" in causal
    assert "predicts patch `t + 1`" in causal and "## Warning" not in causal

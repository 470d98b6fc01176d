"""The benchmark: its upstream reference does the same work as ours, its FLOP count matches the model, and
`scripts/benchmark.py --quick` runs end to end (a smoke test: no timing assertions)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from astropt_hf import AstroPTForPreTraining
from astropt_hf.benchmarking import ModelShape, Row, forward_flops_per_token, markdown_table
from astropt_hf.benchmarking.report import STATUSES
from astropt_hf.benchmarking.runner import MEASURES
from astropt_hf.modeling_astropt import spiral_order

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.mark.parametrize("grid", [1, 2, 3, 4, 7, 32])
def test_reference_spiral_rank_orders_like_our_spiral(grid):
    from astropt_hf.benchmarking.upstream_reference import reference_spiral_rank

    rank = reference_spiral_rank(grid).reshape(-1)
    assert sorted(rank.tolist()) == list(range(grid * grid))
    # sorting raster cells by their rank gives the sequence order
    assert [cell for _, cell in sorted(zip(rank, range(grid * grid)))] == spiral_order(grid).tolist()


def test_reference_preprocess_matches_our_patchify_reading_images_like_upstream():
    pytest.importorskip("einops")
    from astropt_hf.benchmarking.inputs import synthetic_images
    from astropt_hf.benchmarking.upstream_reference import reference_preprocess

    shape = ModelShape(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, image_size=48, patch_size=8)
    image = synthetic_images(1, shape.image_size, seed=3)[0]
    ours = AstroPTForPreTraining(shape.config(transpose_patch_grid=True))
    mine = ours.image_to_patches(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    reference = reference_preprocess(image, shape.patch_size)
    assert reference.shape == (shape.num_patches, shape.patch_dim)
    torch.testing.assert_close(mine, reference, atol=5e-3, rtol=2e-3)  # upstream rounds through float16
    # without the transposed reading the grids differ: the comparison is not vacuous
    plain = AstroPTForPreTraining(shape.config()).image_to_patches(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    assert (plain - reference).abs().max() > 0.1


def test_forward_flops_count_every_linear_of_the_model_plus_attention():
    shape = ModelShape(num_hidden_layers=3, num_attention_heads=2, hidden_size=32, image_size=32, patch_size=8)
    model = AstroPTForPreTraining(shape.config())
    multiply_adds = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    length = shape.num_patches
    attention = 2 * shape.num_hidden_layers * length * shape.hidden_size  # scores + weighted values
    assert forward_flops_per_token(shape, length) == 2 * (multiply_adds + attention)


def test_rows_judge_goals_and_render_with_numbered_notes():
    passing = Row("a", "tokens/s", ours=3.0, upstream=2.0, ratio=1.5, goal=1.2).judge()
    failing = Row("b", "s", ours=1.0, upstream=1.1, ratio=1.1, goal=1.2, note="why").judge()
    skipped = Row("c", "x", ratio=0.9, goal=2.0).judge(applicable=False, reason="no bf16 here")
    assert (passing.status, failing.status, skipped.status) == ("pass", "fail", "n/a")
    table = markdown_table([passing, failing, skipped])
    assert "| b [1] |" in table and "[1] why" in table and "[2] no bf16 here" in table
    assert ">= 1.2x" in table


def _load_cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end(tmp_path, capsys):
    pytest.importorskip("astropt.model", reason="upstream astroPT not installed (pip install --no-deps astropt==2.0.9)")
    pytest.importorskip("einops")
    output = tmp_path / "results.json"
    assert _load_cli().main(["--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "| measure | ours | upstream | ratio | goal | pass/fail |" in printed
    results = json.loads(output.read_text())
    assert results["machine"]["torch_version"] == torch.__version__
    rows = results["rows"]
    assert all(row["status"] in STATUSES and row["status"] != "error" for row in rows)
    text = " ".join(row["measure"] for row in rows)
    for expected in ("preprocessing", "input pipeline", "train step fp32", "train step bf16", "MFU fp32",
                     "embeddings fp32, last", "embeddings fp32, middle", "completion", "memory"):
        assert expected in text, expected
    timed = [row for row in rows if row["unit"] in ("tokens/s", "images/s", "s", "ms/image")]
    assert timed and all(row["ours"] > 0 and row["upstream"] > 0 and math.isfinite(row["ratio"]) for row in timed)
    completion = next(row for row in rows if row["measure"].startswith("completion"))
    assert completion["details"]["new_patches"] == 8
    assert set(results["settings"]["measures"]) <= set(MEASURES)
    assert np.isfinite(results["matmul_ceilings"]["fp32"]["flops_per_s"])

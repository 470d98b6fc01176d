"""The normalisation study end to end on tiny data: each variant really trains with its normalisation,
is probed with its baselines, and the table, JSON and chart agree with the per-variant results."""

from __future__ import annotations

import json

import pytest
from test_scaling import tiny_sweep_argv

from astropt_hf import AstroPTConfig
from astropt_hf.studies.normalisation_study import (
    StudyOptions,
    check_study_options,
    parse_variants,
    run_normalisation_study,
)


def test_variant_names_and_study_keys_are_checked(tmp_path):
    assert parse_variants("asinh, per_patch,asinh") == ["asinh", "per_patch"]
    with pytest.raises(ValueError, match="per_pixel"):
        parse_variants("per_patch,per_pixel")
    options = StudyOptions(tmp_path, targets=["mag_r"], pretrain_argv=["--patch_norm", "per_patch"])
    with pytest.raises(ValueError, match="--patch_norm"):
        check_study_options(options)
    with pytest.raises(ValueError, match="targets"):
        check_study_options(StudyOptions(tmp_path))
    with pytest.raises(ValueError, match="asinh_scale"):
        check_study_options(StudyOptions(tmp_path, targets=["mag_r"], asinh_scale=0.0))


@pytest.mark.slow
def test_study_trains_each_normalisation_and_tabulates_the_probes(tmp_path):
    options = StudyOptions(
        tmp_path / "out", variants=["per_patch", "asinh"], targets=["mag_r", "g_r"],
        pretrain_argv=tiny_sweep_argv(tmp_path / "cache", max_steps=4), asinh_scale=0.05,
    )  # fmt: skip
    lines: list[str] = []
    result = run_normalisation_study(options, log=lines.append)
    out = options.output_dir
    stored = json.loads((out / "normalisations.json").read_text())
    assert stored == json.loads(json.dumps(result))
    assert [v["name"] for v in stored["variants"]] == ["per_patch", "asinh"]
    per_patch = AstroPTConfig.from_pretrained(out / "per_patch")
    asinh = AstroPTConfig.from_pretrained(out / "asinh")
    assert (per_patch.patch_norm, asinh.patch_norm) == ("per_patch", "none")
    processor = json.loads((out / "asinh" / "preprocessor_config.json").read_text())
    assert processor["stretch"] == "asinh" and processor["asinh_scale"] == 0.05
    for variant in stored["variants"]:
        probes = json.loads((out / variant["name"] / "probes" / "probe_results.json").read_text())["targets"]
        assert variant["probe"] == probes
        wins = sum(probes[t]["astropt"]["r2"] > probes[t]["random_init"]["r2"] for t in options.targets)
        assert variant["wins_over_random_init"] == wins
    table = (out / "normalisations.md").read_text()
    for target in options.targets:
        row = next(line for line in table.splitlines() if line.startswith(f"| {target} |"))
        assert f"{stored['variants'][0]['probe'][target]['astropt']['r2']:.3f}" in row
    assert (out / "normalisations.png").read_bytes()[:4] == b"\x89PNG"
    assert stored["best"] in ("per_patch", "asinh") and len(lines) == 3
    # finished variants are reused, not retrained
    before = (out / "asinh" / "summary.json").stat().st_mtime_ns
    again = run_normalisation_study(options, log=lambda _: None)
    assert (out / "asinh" / "summary.json").stat().st_mtime_ns == before
    assert again["variants"] == result["variants"]

"""The scripts' command lines: one HfArgumentParser-based parser, no prefix matching, `--help` everywhere,
one set of dataset options with the per-script defaults, and model keys that follow AstroPTConfig."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from downstream_helpers import load_script

from astropt_hf import AstroPTConfig
from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.data.arguments import DataArguments
from astropt_hf.training import ConfigError, PretrainArguments, known_keys, parse_pretrain_args

SCRIPTS = ["pretrain", "finetune", "extract_embeddings", "linear_probe", "similarity_search",
           "convert_astropt_checkpoint", "benchmark", "scaling_sweep", "compare_normalisations"]  # fmt: skip


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        load_script(name).main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--output" in out


def test_abbreviated_flags_are_refused(capsys):
    finetune = load_script("finetune")
    required = ["--model", "m", "--target", "redshift", "--output_dir", "out"]
    assert finetune.parse_args([*required, "--head_init", "probe"])[0].head_init == "probe"
    with pytest.raises(SystemExit) as info:
        finetune.parse_args([*required, "--head_i", "probe"])  # not read as --head_init
    assert info.value.code == 2 and "unrecognized arguments: --head_i probe" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unrecognized arguments: --max_st 5"):
        parse_pretrain_args(["--max_st", "5"])
    sweep = load_script("scaling_sweep").build_parser()
    own, rest = sweep.parse_known(["--sizes", "1x2x8", "--output_dir", "o", "--probe_t", "mag_r"])
    assert own.probe_targets == "" and rest == ["--probe_t", "mag_r"]  # handed on, so pretraining refuses it


def test_dataset_options_are_shared_with_per_script_defaults():
    pretraining = PretrainArguments()
    shared = {f.name: getattr(pretraining, f.name) for f in dataclasses.fields(DataArguments)}
    assert shared == dataclasses.asdict(DataArguments())  # downstream scripts reuse pretraining's synthetic cache
    extract, data = load_script("extract_embeddings").parse_args(["--model", "m", "--output", "o.parquet"])
    assert (extract.split, data.dataset) == ("test", "synthetic")
    assert data.spec(extract.split, image_size=16)["synthetic"] == {
        "num_train": 3000, "num_validation": 256, "num_test": 512, "seed": 0, "image_size": 16}
    search, recorded, _ = load_script("similarity_search").parse_args(
        ["--embeddings", "e.parquet", "--query_index", "0", "--output", "n.png"])
    assert (search.split, recorded.dataset) == (None, None)  # None: the dataset the embeddings file records


def test_every_config_argument_is_a_model_key():
    parameters = set(inspect.signature(AstroPTConfig.__init__).parameters) - {"self", "kwargs"}
    assert {key for key, group in known_keys().items() if group == "model"} == parameters


def test_values_read_the_same_from_a_preset_and_the_command_line():
    @dataclasses.dataclass
    class Options:
        layer: int | str | None = option(None)
        steps: int = option(1)
        flag: bool = option(False)
        betas: list[float] = option([0.9, 0.95])

    parser = ArgumentParser(Options)
    from_argv = parser.parse(["--layer", "3", "--steps", "1e3", "--flag", "no", "--betas", "0.8", "0.9"])[0]
    assert (from_argv.layer, from_argv.steps, from_argv.flag, from_argv.betas) == (3, 1000, False, [0.8, 0.9])
    assert parser.values_from({"layer": "last", "steps": 2000.0, "flag": "yes", "betas": "0.5,0.6"}, "preset") == {
        "layer": "last", "steps": 2000, "flag": True, "betas": [0.5, 0.6]}
    assert parser.parse(["--layer", "null"])[0].layer is None
    with pytest.raises(SystemExit):
        parser.values_from({"steps": "2.5"}, "preset")


def test_list_valued_keys_are_parsed_item_by_item():
    args = parse_pretrain_args(["--pdf_bins", "0", "0.5", "1e0", "--modalities", "images", "spectra"])
    assert args.model["pdf_bins"] == [0.0, 0.5, 1.0]
    assert args.model["modalities"] == ["images", "spectra"]
    with pytest.raises(ConfigError, match="pdf_bins"):
        parse_pretrain_args(["--pdf_bins", "0", "one"])

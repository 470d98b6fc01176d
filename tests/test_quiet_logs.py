"""Logs written to a file stay readable: no terminal colour codes, no per-refresh progress lines,
and no launcher notes a shipped accelerate config can avoid."""

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForImageClassification

from astropt_hf import AstroPTForPreTraining, AstroPTImageProcessor
from astropt_hf.data import load_synthetic_galaxies
from astropt_hf.load_reports import plain_load_reports, strip_ansi

REPO = Path(__file__).resolve().parents[1]


def test_head_load_report_has_no_colour_codes_when_not_in_a_terminal(tmp_path, tiny_config):
    AstroPTForPreTraining(tiny_config()).save_pretrained(tmp_path)
    AstroPTImageProcessor(image_size=16, num_channels=3).save_pretrained(tmp_path)
    log_file = io.StringIO()  # stands for a log file: not a terminal, and neither is pytest's stderr
    handler = logging.StreamHandler(log_file)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with plain_load_reports():
            model = AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True, num_labels=1)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    logged = log_file.getvalue()
    assert "LOAD REPORT" in logged and "classifier.weight" in logged  # the report itself still comes
    assert "\x1b[" not in logged
    assert model.classifier.weight.shape[0] == 1


def test_strip_ansi_removes_colours_and_keeps_text():
    assert strip_ansi("\x1b[1mAstroPT LOAD REPORT\x1b[0m | \x1b[38;5;208mUNEXPECTED\x1b[0m") == (
        "AstroPT LOAD REPORT | UNEXPECTED"
    )


def test_synthetic_generation_logs_a_few_lines_not_a_progress_line_per_refresh(tmp_path, capfd):
    capfd.readouterr()
    dataset = load_synthetic_galaxies(num_train=12, num_validation=2, num_test=2, image_size=16,
                                      cache_dir=tmp_path, num_proc=1)  # fmt: skip
    err = capfd.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert len(lines) <= 3, lines
    assert "Generating train split" not in err and "Saving the dataset" not in err
    assert dataset.num_rows == {"train": 12, "validation": 2, "test": 2}


def _accelerate_launch(*launch_args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`accelerate launch` of a script that prints the launcher's settings, with no user config."""
    script = tmp_path / "show_launch.py"
    script.write_text(
        "import json, os\n"
        "print(json.dumps({k: v for k, v in sorted(os.environ.items()) if k.startswith('ACCELERATE_')}))\n"
    )
    # An empty HF_HOME hides any `accelerate config` of the user's; the CPU-only case is forced.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "CUDA_VISIBLE_DEVICES": ""}
    launcher = Path(sys.executable).with_name("accelerate")
    return subprocess.run([str(launcher), "launch", *launch_args, str(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_single_process_accelerate_config_runs_like_the_default_without_its_note(tmp_path):
    default = _accelerate_launch(tmp_path=tmp_path)
    shipped = _accelerate_launch(
        "--config_file", "scripts/configs/accelerate/single_process.yaml", tmp_path=tmp_path
    )
    assert default.returncode == 0 and shipped.returncode == 0, default.stderr + shipped.stderr
    assert "had defaults used instead" in default.stderr  # accelerate's note ("--num_processes ... 0", ...)
    assert "had defaults used instead" not in shipped.stderr, shipped.stderr
    # One process, and the script sees the same launcher settings either way.
    assert shipped.stdout.strip().splitlines() == default.stdout.strip().splitlines()
    assert len(shipped.stdout.strip().splitlines()) == 1

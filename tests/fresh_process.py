"""Run a script in a fresh interpreter where `import astropt_hf` fails, so that every class it loads comes
from a checkpoint's own copy of the remote code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

WITHOUT_ASTROPT_HF = textwrap.dedent(
    """
    import builtins
    real_import = builtins.__import__
    def guarded_import(name, *args, **kwargs):
        if name == "astropt_hf" or name.startswith("astropt_hf."):
            raise ImportError("astropt_hf is not installed here")
        return real_import(name, *args, **kwargs)
    builtins.__import__ = guarded_import
    try:
        import astropt_hf  # noqa
        raise SystemExit("astropt_hf was importable")
    except ImportError:
        pass
    """
)

# The start of a loader script for a checkpoint with spectra: argv is (checkpoint, .npz with images, flux,
# wavelengths and ivar, output path); it leaves `processor`, its `inputs` and the pretraining `model`.
LOAD_MULTIMODAL_CHECKPOINT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor
    checkpoint, data_path, out_path = sys.argv[1:4]
    data = np.load(data_path)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    inputs = processor(images=list(data["images"]), spectra=list(data["flux"]), wavelengths=data["wavelengths"],
                       ivar=list(data["ivar"]))
    model = AutoModelForPreTraining.from_pretrained(checkpoint, trust_remote_code=True).eval()
    """
)


def run_without_astropt_hf(body: str, folder: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Write `body` (dedented) after the import guard into `folder/loader.py` and run it with `args`;
    the process runs outside the repository so that no local package shadows the guard."""
    script = Path(folder) / "loader.py"
    script.write_text(WITHOUT_ASTROPT_HF + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=str(folder), timeout=timeout)

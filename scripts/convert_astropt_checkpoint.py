"""Convert an upstream astroPT checkpoint (`ckpt.pt`) into a Transformers checkpoint directory.

    python scripts/convert_astropt_checkpoint.py --checkpoint ckpt.pt --output_dir astropt-hf
    python scripts/convert_astropt_checkpoint.py --checkpoint Smith42/astroPT_v2.0 \
        --checkpoint_file astropt/095M/ckpt.pt --output_dir astropt-095M          # from the hub
    python scripts/convert_astropt_checkpoint.py --checkpoint ckpt.pt --output_dir astropt-hf \
        --push_to_hub --hub_model_id your-name/astropt-089M

The file is loaded without running code from it; the converted model is checked against an independent
re-implementation of upstream's forward pass, then reloaded with AutoModel (trust_remote_code=True).
"""

import sys
from dataclasses import dataclass

from astropt_hf.command_line import ArgumentParser, option
from astropt_hf.conversion import ParityCheckError, UnsafeCheckpointError, convert_upstream_checkpoint


@dataclass
class ConvertArguments:
    checkpoint: str = option(
        help="upstream astroPT ckpt.pt (v1, v2.x or v3 layout), or a hub repo id (or folder) with --checkpoint_file"
    )
    output_dir: str = option(help="directory to write the converted model into")
    checkpoint_file: str | None = option(None, "with a hub repo id or folder as --checkpoint: the file in it")
    revision: str | None = option(None, "hub branch, tag or commit for --checkpoint_file")
    keep_prefix_attention: bool = option(
        False, "upstream prefix checkpoints: record attention_pattern='prefix' instead of the bidirectional "
        "attention upstream actually computed"
    )
    image_size: int | None = option(
        None, "image side the model was trained on; default: 512 for v1, 256 for the v2.0 release, the size "
        "recorded in the checkpoint's training config, else sqrt(block_size + 1) * patch_size"
    )
    spectrum_wavelength_scale: float | None = option(
        None, "images+spectra checkpoints: the Angstrom scale the training data divided (wavelength - 3000) by; "
        "default 7000, as astropt 2.0.9's dataset"
    )
    no_parity_check: bool = option(False, "skip the check against upstream's forward")
    push_to_hub: bool = option(False, "upload the output directory to the hub")
    hub_model_id: str | None = option(None, "hub repository for --push_to_hub, e.g. name/astropt")


def parse_args(argv: list[str] | None = None) -> ConvertArguments:
    parser = ArgumentParser(ConvertArguments, description=__doc__)
    (args,) = parser.parse(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    return args


def check_reload(output_dir: str) -> str:
    """Load the result the way users will (remote code) and return a one-line description."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True)
    return f"{type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = convert_upstream_checkpoint(
            args.checkpoint,
            args.output_dir,
            image_size=args.image_size,
            push_to_hub=args.push_to_hub,
            hub_model_id=args.hub_model_id,
            parity_check=not args.no_parity_check,
            checkpoint_file=args.checkpoint_file,
            revision=args.revision,
            keep_prefix_attention=args.keep_prefix_attention,
            spectrum_wavelength_scale=args.spectrum_wavelength_scale,
        )
    except (UnsafeCheckpointError, ParityCheckError, ValueError, FileNotFoundError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    except Exception as error:  # whatever else a malformed file sets off still ends in one line naming it
        print(f"error: {args.checkpoint}: conversion failed ({type(error).__name__}: {' '.join(str(error).split())})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(report.summary())
    print(f"reload:      AutoModel(trust_remote_code=True) -> {check_reload(args.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert an upstream astroPT checkpoint (`ckpt.pt`) into a Transformers checkpoint directory.

    python scripts/convert_astropt_checkpoint.py --checkpoint ckpt.pt --output_dir astropt-hf
    python scripts/convert_astropt_checkpoint.py --checkpoint ckpt.pt --output_dir astropt-hf \
        --push_to_hub --hub_model_id your-name/astropt-089M

The file is loaded without running code from it; the converted model is checked against an independent
re-implementation of upstream's forward pass, then reloaded with AutoModel (trust_remote_code=True).
"""

from __future__ import annotations

import argparse
import sys

from astropt_hf.conversion import ParityCheckError, UnsafeCheckpointError, convert_upstream_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="upstream astroPT ckpt.pt (v1, v2.x or v3 layout)")
    parser.add_argument("--checkpoint_file", default=None, help="with a hub repo id or folder as --checkpoint: the file in it")
    parser.add_argument("--revision", default=None, help="hub branch, tag or commit for --checkpoint_file")
    parser.add_argument("--output_dir", required=True, help="directory to write the converted model into")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="image side the model was trained on; default: 512 for v1, 256 for the v2.0 release, the size "
        "recorded in the checkpoint's training config, else sqrt(block_size + 1) * patch_size",
    )
    parser.add_argument("--no_parity_check", action="store_true", help="skip the check against upstream's forward")
    parser.add_argument("--push_to_hub", action="store_true", help="upload the output directory to the hub")
    parser.add_argument("--hub_model_id", default=None, help="hub repository for --push_to_hub, e.g. name/astropt")
    args = parser.parse_args(argv)
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

"""``adaptkern flops``: exact training FLOPs of a model config at a set of shapes, per layer
type, beside the 6*N*D estimate and the count a padded batch would execute."""

import json
import sys

from ._types import int_at_least


def _size(text: str, option: str):
    """'224' -> 224, '224x160' -> (224, 160); errors name ``option``."""
    try:
        if "x" in text:
            h, w = text.split("x", 1)
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise ValueError(f"{option}: expected a size like 224 or 224x160, got {text!r}") from None


def run(args) -> int:
    from adaptkern._io import atomic_write
    from adaptkern.flops.report import flops_report, format_report, plot_report

    try:
        image_size = None if args.image_size is None else _size(args.image_size, "--image-size")
        resolutions = None if args.resolutions is None else [_size(r, "--resolutions") for r in args.resolutions]
        report = flops_report(args.model, patch_sizes=args.patch_sizes, image_size=image_size,
                              context_lengths=args.context_lengths, batch_size=args.batch_size,
                              resolutions=resolutions, mixed_lengths=args.mixed_lengths, compute=args.compute,
                              progress=not args.no_progress and not args.json)
        data = report.to_dict()
        if args.out:
            atomic_write(args.out, lambda f: f.write(json.dumps(data, indent=1) + "\n"), text=True)
        if args.json:
            print(json.dumps(data, indent=1))
        else:
            print(format_report(report))
        if args.plot:
            plot_report(report, args.plot)
        if not args.json:
            for path, what in ((args.out, "JSON"), (args.plot, "plot")):
                if path:
                    print(f"wrote {what}: {path}")
    except (ValueError, OSError) as error:
        print(f"adaptkern flops: error: {str(error).replace('adaptkern.flops.flops_report: ', '')}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    from adaptkern.flops.report import MODELS

    presets = "; ".join(f"{name}: {c['kind']} dim {c['dim']} depth {c['depth']} heads {c['num_heads']}"
                        for name, c in MODELS.items())
    parser = subparsers.add_parser(
        "flops", help="exact training FLOPs per sample and per step by layer type, vs 6ND and padded batches",
        description="Count one training step (forward + backward) exactly with FlopCounterMode, one sample per "
                    "distinct shape, and report per-sample and per-step FLOPs per layer type, the 6*N*D estimate "
                    "(N = non-embedding parameters, Kaplan et al.) and, for a mixed batch, what padding every "
                    f"sample to the largest would execute. Models: {presets}.")
    parser.add_argument("--model", default="vit-b", choices=sorted(MODELS), help="model config (default vit-b)")
    vit = parser.add_argument_group("ViT shapes")
    vit.add_argument("--patch-sizes", type=int_at_least(1), nargs="+", metavar="P",
                     help="patch sizes (default: the preset's)")
    vit.add_argument("--image-size", metavar="S", help="image size, 224 or HxW (default: the preset's)")
    vit.add_argument("--resolutions", nargs="+", metavar="S",
                     help="a mixed-resolution batch (sizes 224 or HxW, cycled to --batch-size): packed vs padded")
    lm = parser.add_argument_group("LM shapes")
    lm.add_argument("--context-lengths", type=int_at_least(1), nargs="+", metavar="L",
                    help="context lengths (default: preset's)")
    lm.add_argument("--mixed-lengths", type=int_at_least(1), nargs="+", metavar="L",
                    help="a packed batch of sequences of these lengths (cycled to --batch-size): packed vs padded")
    parser.add_argument("--batch-size", type=int_at_least(1), default=1, metavar="B",
                        help="samples per step (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (exact integers)")
    parser.add_argument("--out", metavar="FILE.json", help="also write the JSON report to FILE.json")
    parser.add_argument("--plot", metavar="FILE.png", help="plot FLOPs per sample vs shape by layer type")
    parser.add_argument("--compute", action="store_true",
                        help="count with the real arithmetic (slow; the default skips it: identical counts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)

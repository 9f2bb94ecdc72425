"""``adaptkern train``: one training run (a static shape or a shape schedule) with the exact
FLOP ledger, checkpoints and metrics; runs under ``torchrun`` as DistributedDataParallel
(``torchrun --nproc_per_node 2 -m adaptkern train ...``)."""

import math
import sys


def parse_schedule(text: str):
    """"p16:2e10,p8:8e10,p4" -> ShapeSchedule: each shape until the compute reaches its
    number (training FLOPs), the last one to the end."""
    from adaptkern.train import ShapeSchedule

    segments = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for i, part in enumerate(parts):
        shape, sep, end = part.partition(":")
        if i < len(parts) - 1 and not sep:
            raise ValueError(f"--schedule: every segment but the last needs SHAPE:FLOPS, got {part!r}")
        if not shape.strip():
            raise ValueError(f"--schedule: segment {part!r} names no shape")
        try:
            flops = float(end) if sep else math.inf
        except ValueError:
            raise ValueError(f"--schedule: {end!r} in {part!r} is not a number of FLOPs") from None
        if sep and not (math.isfinite(flops) and flops > 0):
            raise ValueError(f"--schedule: the FLOPs in {part!r} must be a finite number > 0, got {end!r}")
        segments.append((shape.strip(), flops))
    if not segments:
        raise ValueError("--schedule: empty")
    try:
        return ShapeSchedule(tuple(segments))
    except ValueError as error:
        raise ValueError(f"--schedule: {str(error).replace('ShapeSchedule: ', '')}") from None


def run(args) -> int:
    from adaptkern.cli.demo import apply_threads
    from adaptkern.train import RunConfig, ShapeSchedule, distributed, train_run
    from adaptkern.train.demo import default_device, make_task, settings_for

    apply_threads(args)
    try:
        settings = settings_for(args.model, budget=args.budget, batch_size=args.batch_size,
                                tokens_per_batch=args.tokens_per_batch, n_evals=args.evals)
        task = make_task(args.model, settings, images=args.images, text=args.text, seed=args.seed)
        if bool(args.shape) == bool(args.schedule):
            raise ValueError("give exactly one of --shape SHAPE or --schedule SHAPE:FLOPS,...,SHAPE")
        schedule = ShapeSchedule.static(task.short_name(args.shape)) if args.shape else parse_schedule(args.schedule)
        schedule = ShapeSchedule(tuple((task.short_name(s), e) for s, e in schedule.segments))
        config = RunConfig(budget=int(settings["budget"]), seed=args.seed, lr=settings["lr"],
                           n_evals=settings["n_evals"], first_eval_fraction=settings["first_eval_fraction"],
                           stop_at_loss=args.target_loss, progress=not args.no_progress)
        result = train_run(task, schedule, config, args.out, device=args.device or default_device(),
                           resume=args.resume)
    except (ValueError, OSError) as error:
        print(f"adaptkern train: error: {error}", file=sys.stderr)
        return 2
    if distributed.is_main():
        print(f"{result.steps} steps, {result.compute:.4g} exact training FLOPs over {distributed.world_size()} "
              f"process(es), stopped by {result.stopped}, {result.seconds:.1f} s")
        for row in result.evals:
            print(f"  eval at {row['compute']:.4g} FLOPs (step {row['step']}, {row['shape']}): loss {row['loss']:.4f}")
        print(result.ledger.summary())
        print(f"wrote {args.out}/ (metrics.jsonl, evals.jsonl, ledger.json, checkpoint.pt, summary.json)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="one training run (static shape or schedule) with exact FLOP ledger; works under torchrun",
        description="Train a packed ViT (patch sizes) or LM (context lengths) at one shape or on a compute "
                    "schedule, recording exact FLOPs per shape and phase, checkpointing and evaluating at "
                    "log-spaced compute points. Under torchrun it trains with DistributedDataParallel.")
    from adaptkern.cli.demo import add_run_arguments

    add_run_arguments(parser, model_help="vit: a packed ViT on images; lm: a packed causal LM on bytes")
    parser.add_argument("--shape", help="a static shape: p8, p8@24, ctx128")
    parser.add_argument("--schedule", metavar="S:FLOPS,...,S",
                        help="shapes with the training FLOPs at which each ends, e.g. p16:2e10,p8:8e10,p4")
    parser.add_argument("--out", default="adaptkern-run", metavar="DIR")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.set_defaults(func=run)

"""``adaptkern demo``: the main job. Sweep static shapes, fit per-shape scaling laws, plan
the compute-optimal shape schedule, train adaptively, and report the exact FLOPs each
static shape and the adaptive run needed to reach a target loss (table, JSON, PNG)."""

import sys

from ._types import device, int_at_least, positive_float


def add_run_arguments(parser, *, model_help: str) -> None:
    """Options shared by ``demo`` and ``train``: model, data, batch, evals, device, seed."""
    parser.add_argument("--model", choices=["vit", "lm"], default="vit", help=model_help)
    parser.add_argument("--images", metavar="DIR", help="your images (one subfolder per class) instead of the "
                                                       "embedded synthetic glyphs (with --model vit)")
    parser.add_argument("--text", metavar="FILE", help="your text file (byte-level LM) instead of the embedded "
                                                      "synthetic copy corpus (with --model lm)")
    parser.add_argument("--budget", type=positive_float, metavar="FLOPS",
                        help="training FLOPs per run (exact count, e.g. 4e11); evals at log-spaced budgets up to it")
    parser.add_argument("--evals", type=int_at_least(2), metavar="N", help="evals per run (log-spaced in compute)")
    parser.add_argument("--target-loss", type=positive_float, metavar="L", help="the target loss")
    parser.add_argument("--batch-size", type=int_at_least(1), metavar="B", help="global images per step (vit)")
    parser.add_argument("--tokens-per-batch", type=int_at_least(1), metavar="T", help="global tokens per step (lm)")
    parser.add_argument("--device", type=device,
                        help="cpu, cuda, cuda:1 ... (default: cuda when available; under torchrun one "
                             "GPU per rank)")
    parser.add_argument("--threads", type=int_at_least(1), metavar="N", help="CPU threads for torch (default 1 on CPU)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="data and model seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_threads(args) -> None:
    """--threads, else one thread on CPU: the models are tiny, per-op overhead dominates, and a
    second OpenMP thread mostly spins (on a shared 2-core machine it made steps many times
    slower)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    elif not (args.device or "").startswith("cuda") and not torch.cuda.is_available():
        torch.set_num_threads(1)


def run(args) -> int:
    import torch

    from adaptkern.train.demo import default_device, default_jobs, run_demo

    apply_threads(args)
    jobs = args.jobs or default_jobs(args.device or default_device())
    try:
        run_demo(args.model, images=args.images, text=args.text, shapes=args.shapes, budget=args.budget,
                 device=args.device, out=args.out, fast=args.fast, seed=args.seed, resume=args.resume,
                 target_loss=args.target_loss, batch_size=args.batch_size, tokens_per_batch=args.tokens_per_batch,
                 evals=args.evals, seeds=args.seeds, switch_on=args.switch_on, probes=args.probes,
                 oracle_points=args.oracle_points, progress=not args.no_progress,
                 jobs=jobs, threads=torch.get_num_threads())
    except (ValueError, OSError) as error:
        print(f"adaptkern demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: static shape sweep, per-shape laws, compute-optimal adaptive run, FLOPs report",
        description="Sweep fixed shapes (ViT patch sizes or LM context lengths) on the embedded synthetic data (or "
                    "your own), fit one scaling law per shape, plan the compute-optimal shape schedule, train "
                    "adaptively along it, and report the exact FLOPs each run needed to reach the target loss. "
                    "Writes OUT/summary.json and OUT/demo.png and prints a table.")
    add_run_arguments(parser, model_help="vit: patch-size schedule on images (default); lm: context-length "
                                         "schedule on text")
    parser.add_argument("--shapes", nargs="+", metavar="SHAPE",
                        help="shapes to sweep: patch sizes like p16 p8 p4 (or p8@24: patch 8 at resolution 24) "
                             "for vit, contexts like ctx16 ctx64 ctx256 for lm")
    parser.add_argument("--out", default="adaptkern-demo", metavar="DIR", help="output folder (default adaptkern-demo)")
    parser.add_argument("--fast", action="store_true", help="tiny budgets (CI): checks the pipeline in seconds")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="measured seeds (SEED, SEED+1, ...; default 3, 1 with --fast); tuning uses SEED+1000")
    parser.add_argument("--probes", type=int_at_least(0), metavar="N",
                        help="switch probes per forward shape pair on the tuning seed (default 4, 1 with --fast; 0: "
                             "none, the planner gets the raw jumps measured late in the tuning runs; none for lm)")
    parser.add_argument("--oracle-points", type=int_at_least(0), metavar="N",
                        help="single switch points the oracle tries on the first seed (default 4, 2 with --fast; "
                             "0: no oracle)")
    parser.add_argument("--switch-on", choices=["loss", "compute"], default="loss",
                        help="adaptive switches when the smoothed training loss reaches the planned level (default) "
                             "or when the compute reaches the planned FLOPs")
    parser.add_argument("--jobs", type=int_at_least(1), metavar="N",
                        help="runs trained at once, each in its own process (default: one per CPU core on CPU, at "
                             "most 8; 1 on a GPU or under torchrun); the numbers do not depend on it")
    parser.add_argument("--resume", action="store_true",
                        help="continue in OUT: keep finished runs, resume unfinished ones from their checkpoints")
    parser.set_defaults(func=run)

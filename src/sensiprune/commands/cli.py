"""The ``sensiprune`` command. Exit codes: 0 success, 1 failed run, 2 bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sensiprune import criteria, distributed
from sensiprune.errors import SensipruneError
from sensiprune.threads import respawn_spinning


def _demo(args: argparse.Namespace) -> int:
    from sensiprune.commands.demo import run_demo

    result = run_demo(args.out, seed=args.seed, quick=args.quick)
    print(result.report.read_text())
    print(f"\nreport: {result.report}\nplot:   {result.plot}")
    return 0


def _criteria(args: argparse.Namespace) -> int:
    rows = [(name, criteria.get(name)) for name in criteria.available()]
    said = {name: ", ".join(crit.capabilities) or "-" for name, crit in rows}
    width = max(map(len, said.values()))
    for name, crit in rows:
        print(f"{name:16} {said[name]:{width}} {crit.summary}")
    print(
        "\ndata: needs batches to score; channels only: structured=True only; scores groups: "
        "scores whole channel groups; compensates: moves the weights that stay, so single "
        "weights only (structured=False); measures loss: runs the model once per candidate "
        "(exact, slow on big models)."
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from sensiprune.runs.runner import run_recipe

    result = run_recipe(args.recipe, restart=args.restart, show_progress=not args.quiet)
    if result.resumed_after and distributed.is_main():
        print(f"resumed after {result.resumed_after}")
    _show(result.report, args.quiet, f"model:  {result.directory / 'model'}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from sensiprune.commands.analyze import run_analysis

    path = run_analysis(args.recipe, restart=args.restart, show_progress=not args.quiet)
    _show(path, args.quiet, f"budget: {path.parent / 'budget.json'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from sensiprune.commands.compare import run_comparison

    path = run_comparison(args.recipe, restart=args.restart, show_progress=not args.quiet)
    _show(path, args.quiet, f"plot:   {path.parent / 'comparison.png'}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from sensiprune.commands.compress import run_compression

    path = run_compression(args.recipe, restart=args.restart, show_progress=not args.quiet)
    _show(path, args.quiet, f"model:  {path.parent / 'model'}")
    return 0


def _show(report: Path, quiet: bool, extra: str) -> None:
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return
    if not quiet:
        print(report.read_text())
    print(f"report: {report} (and {report.with_suffix('.html').name})\n{extra}")


def _report(args: argparse.Namespace) -> int:
    from sensiprune.report.run import write_run_report

    path = write_run_report(args.run_dir)
    print(f"report: {path} (and report.html)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensiprune", description="Sensitivity-based pruning of PyTorch models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="prune LeNet-300-100 and LeNet-5 on real digits with every criterion"
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--quick", action="store_true", help="two criteria, two sparsities: a smoke run"
    )
    demo.set_defaults(run=_demo)
    _recipe_command(
        commands,
        "prune",
        _prune,
        "run a YAML recipe: prune, fine-tune, measure, report (resumes after a crash)",
        "Run a recipe. Re-running the same command after a crash or Ctrl-C resumes after the "
        "last finished stage. Relative paths are read from the current directory; import "
        "paths also from the recipe's directory.",
    )
    _recipe_command(
        commands,
        "analyze",
        _analyze,
        "per-layer sensitivity curves and the budget they allocate, cross-validated",
        "Measure each layer's sensitivity on the validation split, allocate the recipe's "
        "target per layer, cross-validate it, and write analysis.md / .html and budget.json "
        "into the run directory. A later `prune` of the same recipe reuses the curves.",
    )
    _recipe_command(
        commands,
        "compare",
        _compare,
        "the recipe's criteria side by side (compare.criteria at compare.sparsities)",
        "Prune copies of the dense model with each of compare.criteria at each of "
        "compare.sparsities, with the same ranking and fine-tuning, and write comparison.md "
        "/ .html with one chart of the metric against sparsity.",
    )
    _recipe_command(
        commands,
        "compress",
        _compress,
        "compress the recipe's model to compress.target (params, bytes, flops, speedup, max_drop)",
        "Measure per-layer sensitivity on the validation split, allocate the per-layer "
        "thresholds for compress.target, cross-validate them, prune and fine-tune, and write "
        "the model (model/), compress.json and compress.md / .html into the run directory.",
    )
    report = commands.add_parser("report", help="rewrite a finished run's report and plots")
    report.add_argument("run_dir", help="the run directory (the recipe's output)")
    report.set_defaults(run=_report)
    listing = commands.add_parser("criteria", help="list the registered criteria")
    listing.set_defaults(run=_criteria)
    return parser


RECIPE_IS_CODE = (
    "A recipe is code, like a Python script: its model factory, data factory, loss and "
    "metric are\nimported and run with your permissions. Read a recipe from someone else "
    "before you run it.\nImport paths resolve to the recipe's folder, the directory you run "
    "in, installed packages and\nsensiprune; Python's standard library (os, subprocess, "
    "builtins, sys ...) is refused."
)


def _recipe_command(
    commands: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
) -> None:
    """The commands that read a recipe share their arguments and the field reference."""
    from sensiprune.runs.recipe import field_reference

    command = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=RECIPE_IS_CODE + "\n\nrecipe fields:\n" + field_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("recipe", help="the recipe file (see examples/recipes/)")
    command.add_argument(
        "--restart", action="store_true", help="discard the run's checkpoint and start over"
    )
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bars or report")
    command.set_defaults(run=run)


TIMED = ("compress", "demo")  # commands that time models: run with the CPU's threads spinning


def main(argv: Sequence[str] | None = None) -> int:
    """``argv``: the command line (by default the process's own, which a command that times
    re-runs with the CPU's threads spinning, see :mod:`sensiprune.threads`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.command in TIMED:
        respawn_spinning(["-m", "sensiprune", *sys.argv[1:]])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return args.run(args)
    except SensipruneError as exc:
        print(f"sensiprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sensiprune: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())

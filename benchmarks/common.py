"""What every benchmark script shares: its command line and the header and footer of its table."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from sensiprune.threads import WAIT_POLICY, respawn_spinning


def spin_threads() -> None:
    """A benchmark that times re-runs itself with the CPU's threads spinning between
    operators (see ``sensiprune.threads``), unless OMP_WAIT_POLICY is set already."""
    respawn_spinning(sys.argv)


def parser(doc: str, default_out: str, quick_help: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument("--out", default=default_out, help=f"results table (default: {default_out})")
    cli.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    cli.add_argument("--quick", action="store_true", help=quick_help)
    return cli


def header(
    title: str,
    script: str,
    args: argparse.Namespace,
    extra: str = "",
    seeds: list[int] | None = None,
) -> list[str]:
    """Title, the command that reproduces the table, and the machine it ran on (``seeds``:
    a run over several seeds, from ``--seed`` on)."""
    options = " --quick" if args.quick else ""
    if seeds is not None and not args.quick:
        options += f" --seeds {len(seeds)}"
    if args.seed:
        options += f" --seed {args.seed}"
    ran = f"seeds {seeds[0]}-{seeds[-1]}" if seeds and len(seeds) > 1 else f"seed {args.seed}"
    if WAIT_POLICY in os.environ:
        ran += f", {WAIT_POLICY}={os.environ[WAIT_POLICY]}"
    return [
        f"# {title}",
        "",
        f"`python benchmarks/{script}{options}` — "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {ran}{extra}.",
        "",
    ]


def finish(lines: list[str], out: str, started: float) -> None:
    """Add the total time, write the table and print it."""
    lines += ["", f"Total benchmark time: {time.perf_counter() - started:.0f} s.", ""]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines))
    print("\n".join(lines))


def leave_benchmarks_folder() -> None:
    """Take this folder off the import path once its own modules are imported: its
    transformers.py would stand in for the transformers package."""
    here = Path(__file__).parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def trained_on_digits(factory, data, seed: int, epochs: int = 40) -> torch.nn.Module:
    """A model of ``factory`` trained from seed ``seed`` on the digits' training split: the
    dense baseline the digits benchmarks prune."""
    import sensiprune as sp

    torch.manual_seed(seed)
    model = factory()
    sp.finetune(model, data.train, epochs=epochs, show_progress=False)
    return model


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (VmHWM). Not ``ru_maxrss``: a child
    process started from a large one inherits its parent's mark across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """exp of the mean token cross-entropy of a causal LM over rows of equal length (no
    padding): the measure both libraries' rows of benchmarks/llm.py are scored with."""
    losses = [model(row[None], labels=row[None]).loss.double().item() for row in ids]
    return math.exp(sum(losses) / len(losses))


def block_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exact zeros over the Linear weights inside a decoder's layers."""
    weights = [m.weight for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)

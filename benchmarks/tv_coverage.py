"""torchvision classifiers: every one prunes structurally and keeps its output shape.

Runs in the benchmark venv (.venv-bench, see coverage.py: torch 2.14.1, torchvision 0.29.1);
random weights, nothing downloaded. Writes benchmarks/results/tv_coverage.md:

    .venv-bench/bin/python benchmarks/tv_coverage.py     # about 3 minutes on 2 cores

Each model, in eval mode on one 224x224 image (299 for Inception v3), loses 30% of the
channels of every coupled family (``scope="layer"``, magnitude), its last Linear layer kept.
"""

from __future__ import annotations

import time
import warnings

import torch
from common import finish, header, leave_benchmarks_folder, parser

leave_benchmarks_folder()

import sensiprune as sp  # noqa: E402


def survey(name: str) -> str:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 299 if "inception" in name else 224, 299 if "inception" in name else 224)

    def output() -> torch.Size:
        with torch.no_grad():
            out = model(x)
        return (out[0] if isinstance(out, tuple) else out).shape

    shape = output()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    start = time.perf_counter()
    result = sp.prune(model, 0.3, criterion="magnitude", structured=True, example_inputs=x,
                      scope="layer", ignore=head)  # fmt: skip
    seconds = time.perf_counter() - start
    kept = "yes" if output() == shape else "**no**"
    return (
        f"| {name} | yes | {kept} | {result.flops_before / result.flops_after:.2f}x "
        f"| {seconds:.1f} |"
    )


def main() -> None:
    import torchvision

    args = parser(__doc__, "benchmarks/results/tv_coverage.md", "five models").parse_args()
    started = time.perf_counter()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    names = torchvision.models.list_models(module=torchvision.models)
    names = names[:5] if args.quick else names
    rows = []
    for name in names:
        try:
            rows.append(survey(name))
        except Exception as exc:  # one failure must not stop the survey
            rows.append(f"| {name} | **no** | no | — | — | {type(exc).__name__}: {exc} |"[:300])
        print(rows[-1], flush=True)
    ran = sum("| yes | yes |" in row for row in rows)
    lines = header("torchvision coverage", "tv_coverage.py", args, "")
    lines += [
        f"torchvision {torchvision.__version__}, torch {torch.__version__}. {ran} of "
        f"{len(names)} classifiers pruned with their output shape kept.",
        "",
        "| model | ran | shape kept | FLOP reduction | prune s |",
        "|---|---|---|---:|---:|",
        *rows,
    ]
    finish(lines, args.out, started)


if __name__ == "__main__":
    main()

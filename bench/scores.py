"""What contribution scores cost: seconds per round of the same job without scores and with each
scoring method, side by side in one run, as a ratio to the round without scores.

The job: FedPer (the base shared, each client keeps its head) on MNIST 10k (``--data-dir``,
default ``../shared/data/mnist10k``; scikit-learn's digits with ``--dataset digits``), 20 clients,
pathological 2 classes each, the 4-layer CNN, 1 local epoch, batch 10, lr 0.01, in the standalone
simulation (the entry node runs the very same ``fl.scores`` per round). Scoring per round:

- ``flb``: free-rider flags and FLB's score, whose coefficient takes one validation of the round's
  aggregate (1,000 of the clients' test samples, a linear probe on the base's features);
- ``loo``: leave-one-out, n + 1 aggregates and validations;
- ``gtg``: GTG-Shapley, as many as its truncated permutations need (cached per subset).

    python bench/scores.py [--rounds 5] [--clients 20]
    python bench/scores.py --dataset digits          # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from config import load_config  # noqa: E402
from fl.datasets import load_dataset  # noqa: E402
from fl.simulation import run_simulation  # noqa: E402

METHODS = ("off", "flb", "loo", "gtg")
MNIST10K = ROOT.parent / "shared" / "data" / "mnist10k"


def seconds_per_round(conf: dict, dataset: object) -> tuple[float, int]:
    """Mean seconds of rounds 2+ (the first pays start-up) and how many subsets the last round scored."""
    result = run_simulation(conf, dataset=dataset)
    rounds = result.rounds[1:] or result.rounds
    return statistics.mean(r.seconds for r in rounds), result.rounds[-1].round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    parser.add_argument("--data-dir", type=Path, default=MNIST10K)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    base = {"dataset": args.dataset, "data_dir": str(args.data_dir), "client.amount": args.clients,
            "gobal_epoch": args.rounds, "local_epoch": 1, "BATCH_SIZE": 10, "learn_rate": 0.01, "momentum": 0.0,
            "partition": "pathological", "strategy": "fedper", "openEval": False}
    dataset = load_dataset(args.dataset, args.data_dir)
    rows = []
    for method in METHODS:
        conf = load_config(env={}, overrides={**base, "scores": method})
        seconds, _ = seconds_per_round(conf, dataset)
        rows.append((method, seconds))
        print(f"{method}: {seconds:.2f} s/round", flush=True)
    plain = rows[0][1]
    table = Table(title=f"contribution scores: {args.dataset}, {args.clients} clients, FedPer, {args.rounds} rounds")
    for name in ("scores", "s/round", "× the round without scores"):
        table.add_column(name, justify="right" if name != "scores" else "left")
    for method, seconds in rows:
        table.add_row(method, f"{seconds:.2f}", f"{seconds / plain:.2f}")
    console = Console(width=120)
    console.print(table)
    console.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

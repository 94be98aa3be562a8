"""FedPer vs FedAvg vs Local on the same partition: accuracy and seconds per round.

The default setup is PFLlib's MNIST benchmark: 20 clients, pathological non-IID with 2 classes
per client, 75/25 train/test per client, the 4-layer CNN, 1 local epoch, plain SGD lr 0.005,
batch 10, 50 rounds. Examples:

    python bench/accuracy.py --dataset digits
    python bench/accuracy.py --dataset mnist --data-dir ../shared/data/mnist10k

Accuracy is the sample-weighted test accuracy over all clients' own test splits.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from config import load_config  # noqa: E402
from fl.datasets import load_dataset  # noqa: E402
from fl.simulation import run_simulation  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--partition", default="pathological")
    p.add_argument("--classes-per-client", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0, help="0 = one process per core")
    p.add_argument("--strategies", default="fedper,fedavg,local")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="also save the accuracy curves as PNG")
    args = p.parse_args()

    console = Console()
    dataset = load_dataset(args.dataset, args.data_dir)
    results = {}
    for strategy in args.strategies.split(","):
        conf = load_config(env={}, overrides={
            "dataset": args.dataset, "data_dir": args.data_dir, "client.amount": args.clients,
            "gobal_epoch": args.rounds, "partition": args.partition,
            "classes_per_client": args.classes_per_client, "local_epoch": args.local_epochs,
            "learn_rate": args.lr, "BATCH_SIZE": args.batch_size, "momentum": args.momentum,
            "workers": args.workers, "strategy": strategy, "seed": args.seed, "device": "cpu",
        })
        console.print(f"running {strategy} …")
        results[strategy] = run_simulation(conf, dataset=dataset)

    table = Table(title=(
        f"{args.dataset} ({len(dataset)} samples): {args.clients} clients, {args.partition}"
        f"{f' {args.classes_per_client} classes/client' if args.partition == 'pathological' else ''}, "
        f"{args.rounds} rounds, {args.local_epochs} local epoch, lr {args.lr}, batch {args.batch_size}"))
    for col in ("strategy", "final acc %", "best acc %", "s/round (mean)", "s/round (rounds 2+)"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        later = r.rounds[1:] or r.rounds
        table.add_row(name, f"{100 * r.final_accuracy:.2f}", f"{100 * r.best_accuracy:.2f}",
                      f"{r.seconds_per_round:.2f}", f"{sum(x.seconds for x in later) / len(later):.2f}")
    console.print(table)
    console.print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
                  f"workers={args.workers or 'auto'}")
    if args.plot:
        from fl.report import plot_accuracy

        plot_accuracy({k: v.rounds for k, v in results.items()}, args.plot, f"{args.dataset}, {args.partition}")


if __name__ == "__main__":
    main()

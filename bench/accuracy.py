"""FedPer vs FedAvg vs Local on the same partition: accuracy and seconds per round.

The default setup is PFLlib's MNIST benchmark: 20 clients, pathological non-IID with 2 classes
per client, 75/25 train/test per client, the 4-layer CNN, 1 local epoch, plain SGD lr 0.005,
batch 10, 50 rounds. Examples:

    python bench/accuracy.py --dataset digits
    python bench/accuracy.py --dataset mnist --data-dir ../shared/data/mnist10k

Accuracy is the sample-weighted test accuracy over all clients' own test splits.

Seconds move with the machine's state, so right before each strategy's run the bench times
the yardstick (bench/yardstick.py: the fastest plain-PyTorch schedule for the same clients,
model, local epoch, batch size and lr, over 2 single-threaded worker processes) for
``--yardstick-rounds`` rounds, and reports our s/round (rounds 2+) as a ratio to it
(``vs yardstick``); ``--no-yardstick`` skips it.

``--pfllib DIR`` takes the clients from a split PFLlib prepared (fl/pfllib.py) instead of our
own partition, for our engine and the yardstick alike.
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

from bench.yardstick import YardstickResult, run_yardstick  # noqa: E402
from config import load_config  # noqa: E402
from fl.datasets import canonical_name, load_dataset  # noqa: E402
from fl.federation import JobSpec, client_indices  # noqa: E402
from fl.partition import ClientIndices  # noqa: E402
from fl.pfllib import dataset_family, load_pfllib, read_config  # noqa: E402
from fl.simulation import SimulationResult, run_simulation  # noqa: E402


def yardstick_table(yardsticks: dict[str, YardstickResult], clients: int, rounds: int) -> Table:
    timed = f"rounds 2–{rounds}" if rounds > 1 else "round 1"
    table = Table(title=(
        f"yardstick: plain PyTorch, the same {clients} clients, model, epoch, batch and lr; "
        f"{next(iter(yardsticks.values())).workers} single-threaded worker processes, states "
        f"in shared memory, plain mean; s/round over {timed}"))
    for col in ("measured before", "train s/round", "evaluate s/round", "total s/round", f"acc % (round {rounds}, mean model)"):
        table.add_column(col, justify="right")
    for name, y in yardsticks.items():
        table.add_row(name, f"{y.train_s:.3f}", f"{y.eval_s:.3f}", f"{y.total_s:.3f}",
                      f"{100 * y.rounds[-1].accuracy:.2f}")
    return table


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
    p.add_argument("--yardstick-rounds", type=int, default=3,
                   help="rounds of the plain-PyTorch yardstick timed before each strategy (s/round over rounds 2+)")
    p.add_argument("--yardstick-workers", type=int, default=2, help="the yardstick's worker processes")
    p.add_argument("--no-yardstick", action="store_true", help="skip the yardstick (no 'vs yardstick' column)")
    p.add_argument("--pfllib", type=Path, default=None, metavar="DIR",
                   help="use the split PFLlib prepared in DIR (e.g. PFLlib/dataset/MNIST) instead of our partition")
    args = p.parse_args()
    if args.yardstick_rounds < 1:
        p.error("--yardstick-rounds must be at least 1")

    console = Console()
    splits: list[ClientIndices] | None = None
    if args.pfllib:
        dataset, splits = load_pfllib(args.pfllib)
        pfl = read_config(args.pfllib)
        args.dataset, args.clients = dataset_family(dataset.name), len(splits)
        console.print(f"PFLlib split {args.pfllib}: {len(splits)} clients, {len(dataset)} samples "
                      f"({dataset.name}); --data-dir, --clients, --partition and --classes-per-client do not apply")
        title = (f"{dataset.name} from {args.pfllib} ({len(dataset)} samples): {args.clients} clients, "
                 f"PFLlib partition {pfl.get('partition')!s} (non_iid {pfl.get('non_iid')}, balance {pfl.get('balance')}), ")
    else:
        dataset = load_dataset(args.dataset, args.data_dir)
        args.dataset = canonical_name(args.dataset)
        title = (f"{args.dataset} ({len(dataset)} samples): {args.clients} clients, {args.partition}"
                 f"{f' {args.classes_per_client} classes/client' if args.partition == 'pathological' else ''}, ")
    title += f"{args.rounds} rounds, {args.local_epochs} local epoch, lr {args.lr}, batch {args.batch_size}"

    results: dict[str, SimulationResult] = {}
    yardsticks: dict[str, YardstickResult] = {}
    for strategy in args.strategies.split(","):
        conf = load_config(env={}, overrides={
            "dataset": args.dataset, "data_dir": args.data_dir, "client.amount": args.clients,
            "gobal_epoch": args.rounds, "partition": args.partition,
            "classes_per_client": args.classes_per_client, "local_epoch": args.local_epochs,
            "learn_rate": args.lr, "BATCH_SIZE": args.batch_size, "momentum": args.momentum,
            "workers": args.workers, "strategy": strategy, "seed": args.seed, "device": "cpu",
        })
        if not args.no_yardstick:
            console.print(f"timing the yardstick ({args.yardstick_rounds} rounds) …")
            yardsticks[strategy] = run_yardstick(
                dataset, splits if splits is not None else client_indices(dataset.y.numpy(), JobSpec.from_config(conf)),
                lr=args.lr, batch_size=args.batch_size, local_epochs=args.local_epochs, momentum=args.momentum,
                rounds=args.yardstick_rounds, workers=args.yardstick_workers, model=conf["model"],
                head_layers=conf["head_layers"], seed=args.seed)
        console.print(f"running {strategy} …")
        results[strategy] = run_simulation(conf, dataset=dataset, splits=splits)

    if yardsticks:
        console.print(yardstick_table(yardsticks, args.clients, args.yardstick_rounds))
    if results:
        table = Table(title=title)
        columns = ["strategy", "final acc %", "best acc %", "s/round (mean)", "s/round (rounds 2+)"]
        for col in columns + (["vs yardstick"] if yardsticks else []):
            table.add_column(col, justify="right")
        for name, r in results.items():
            later = r.rounds[1:] or r.rounds
            ours = sum(x.seconds for x in later) / len(later)
            row = [name, f"{100 * r.final_accuracy:.2f}", f"{100 * r.best_accuracy:.2f}",
                   f"{r.seconds_per_round:.2f}", f"{ours:.2f}"]
            if yardsticks:
                row.append(f"{ours / yardsticks[name].total_s:.2f}×" if name in yardsticks else "–")
            table.add_row(*row)
        console.print(table)
    console.print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
                  f"workers={args.workers or 'auto'}")
    if args.plot and results:
        from fl.report import plot_accuracy

        plot_accuracy({k: v.rounds for k, v in results.items()}, args.plot, f"{args.dataset}, {args.partition}",
                      {k: v.rounds[-1].client_acc for k, v in results.items()})


if __name__ == "__main__":
    main()

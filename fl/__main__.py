"""``python -m fl``: the standalone simulation (server and N clients, no network).

Example: ``python -m fl --dataset digits --clients 10 --rounds 20 --strategy fedper``, or with a
robust rule: ``python -m fl --dataset digits --strategy fedavg --aggregation krum --krum-f 2``.
Every flag overrides one key of ``config.my_conf``; ``--config`` and ``FL_*`` environment
variables work as described in config.py.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from config import ConfigError, load_config, parse_assignments

# flag → config key (the names users know stay the config's)
FLAGS: dict[str, tuple[str, type, str]] = {
    "dataset": ("dataset", str, "digits | mnist | fashionmnist | cifar10 | stdlib | text (model=lora)"),
    "clients": ("client.amount", int, "number of clients"),
    "rounds": ("gobal_epoch", int, "global rounds"),
    "strategy": ("strategy", str, "what is shared: fedper (base layers) | fedavg (all) | local (nothing) | "
                 "distill (outputs on a public set) | split | splitfed (split learning)"),
    "aggregation": ("aggregation", str, "how updates combine: mean | fedavgm | fedadam | median | trimmed_mean | krum"),
    "proximal-mu": ("proximal_mu", float, "FedProx proximal term on the clients (0 = off; any rule)"),
    "update-norm-bound": ("update_norm_bound", float,
                          "bound ||update - global|| by this times ||global|| (0 = off; any rule)"),
    "update-norm-clip": ("update_norm_clip", int, "0: refuse an update beyond the bound; 1: clip it to the bound"),
    "server-lr": ("server_lr", float, "fedavgm: server learning rate"),
    "server-momentum": ("server_momentum", float, "fedavgm: server momentum"),
    "adam-lr": ("adam_lr", float, "fedadam: server learning rate"),
    "adam-beta1": ("adam_beta1", float, "fedadam: first-moment decay"),
    "adam-beta2": ("adam_beta2", float, "fedadam: second-moment decay"),
    "adam-tau": ("adam_tau", float, "fedadam: adaptivity tau"),
    "trim-beta": ("trim_beta", float, "trimmed_mean: share cut at each end, in [0, 0.5)"),
    "krum-f": ("krum_f", int, "krum: attackers assumed (needs clients >= 2f+3)"),
    "krum-m": ("krum_m", int, "krum: updates selected (> 1: Multi-Krum)"),
    "local-epochs": ("local_epoch", int, "local epochs per round"),
    "lr": ("learn_rate", float, "learning rate"),
    "batch-size": ("BATCH_SIZE", int, "batch size"),
    "momentum": ("momentum", float, "SGD momentum"),
    "partition": ("partition", str, "iid | pathological | dirichlet"),
    "classes-per-client": ("classes_per_client", int, "classes per client (pathological)"),
    "alpha": ("dirichlet_alpha", float, "Dirichlet concentration (dirichlet)"),
    "train-fraction": ("train_fraction", float, "share of each client's samples used for training"),
    "model": ("model", str, "auto | mlp | mlp_small | cnn_mnist | cnn_cifar; distill: several, comma-separated"),
    "distill-alpha": ("distill_alpha", float, "distill: weight of the distance from the consensus"),
    "distill-l2": ("distill_l2", int, "distill: 1 squared error of the logits | 0 KL divergence"),
    "distill-public": ("distill_public", int, "distill: samples held out as the public set"),
    "split-layers": ("split_layers", int, "split | splitfed: layers below the cut, on the edge node"),
    "split-labels": ("split_labels", str, "split | splitfed: server (labels at the supernode) | edge (U-shaped)"),
    "model-path": ("model_path", str, "model=lora: a local folder holding the base causal language model"),
    "lora-rank": ("lora_rank", int, "model=lora: the adapters' rank"),
    "lora-alpha": ("lora_alpha", float, "model=lora: the adapters' scale alpha"),
    "lora-variant": ("lora_variant", str, "model=lora: fedavg (A and B averaged) | ffa (FFA-LoRA: A frozen, exact)"),
    "block-size": ("block_size", int, "model=lora: tokens per training sequence"),
    "text-blocks": ("text_blocks", int, "model=lora: at most this many blocks of each text family (0: all)"),
    "head-layers": ("head_layers", int, "how many last layers form the personal head"),
    "seed": ("seed", int, "seed of partition, init and shuffles"),
    "device": ("device", str, "auto | cpu | cuda"),
    "data-dir": ("data_dir", str, "folder holding dataset files"),
    "workers": ("workers", int, "training processes (0 = one per core)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fl",
        description="Simulate federated training on one machine, without a network: what is shared "
                    "(--strategy fedper | fedavg | local) and how updates combine (--aggregation mean | fedavgm "
                    "| fedadam | median | trimmed_mean | krum, each with its options below; an option of "
                    "another rule is an error), plus FedProx's --proximal-mu on the clients.",
    )
    parser.add_argument("--config", help="TOML file with overrides of config.my_conf")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set local_OpenEval=true")
    for flag, (key, kind, text) in FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, default=None, help=f"{text} [{key}]")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/sim-<dataset>-<strategy>-<time>)")
    parser.add_argument("--show-partition", action="store_true",
                        help="print each client's class histogram before training")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        overrides: dict[str, object] = parse_assignments(args.set)
        for flag, (key, _, _) in FLAGS.items():
            value = getattr(args, flag.replace("-", "_"))
            if value is not None:
                overrides[key] = value
        conf = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        return 2
    from fl.options import fit_problem  # torch-free: answers before the dataset is read

    problem = fit_problem(conf["aggregation"], conf["client.amount"], conf)
    if problem is not None:
        console.print(f"[red]configuration error:[/red] {problem}")
        return 2

    # Imported after the config is checked so that `--help` and config errors answer fast.
    from fl.datasets import DatasetError
    from fl.federation import JobSpec, client_indices, own_dataset
    from fl.report import histogram_table, rounds_table, save_run
    from fl.simulation import run_simulation

    try:  # (text is tokenized by the base model's tokenizer: model_path)
        dataset = own_dataset(JobSpec.from_config(conf), conf["data_dir"], conf["model_path"])
    except (DatasetError, ValueError, OSError) as exc:
        console.print(f"[red]dataset error:[/red] {exc}")
        return 2
    rule = "" if conf["aggregation"] == "mean" else f" + {conf['aggregation']}"
    fedprox = f" + FedProx mu={conf['proximal_mu']}" if conf["proximal_mu"] > 0 else ""
    title = (f"{conf['strategy']}{rule}{fedprox} on {dataset.name}: {conf['client.amount']} clients, "
             f"{conf['partition']} partition, {len(dataset)} samples")
    console.print(f"[bold]{title}[/bold]")
    live_view = console.is_terminal and not args.quiet
    rounds_done: list = []
    progress = Progress(TextColumn("[bold]round"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = progress.add_task("rounds", total=conf["gobal_epoch"])
    live = (Live(Group(progress), console=console, vertical_overflow="visible", refresh_per_second=4)
            if live_view else contextlib.nullcontext())

    def on_round(metrics) -> None:  # noqa: ANN001 - RoundMetrics
        rounds_done.append(metrics)
        progress.advance(task)
        if live_view:  # the table grows above the progress bar
            live.update(Group(rounds_table(rounds_done), progress))
        elif not args.quiet:  # a log file gets one line per round
            console.print(_row_line(metrics), soft_wrap=True)

    try:
        if args.show_partition:
            from fl.partition import class_histogram

            splits = client_indices(dataset.y.numpy(), JobSpec.from_config(conf))
            hist = class_histogram(dataset.y.numpy(), [s.train for s in splits], dataset.num_classes)
            console.print(histogram_table(hist.tolist(), [len(s.train) for s in splits],
                                          [len(s.test) for s in splits]))
        with live:
            result = run_simulation(conf, on_round=on_round, dataset=dataset)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1

    name = conf["strategy"] if conf["aggregation"] == "mean" else f"{conf['strategy']}-{conf['aggregation']}"
    out = args.out or Path("runs") / f"sim-{dataset.name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        paths = save_run(result, conf, out)
    except OSError as exc:
        console.print(f"[red]cannot write the results to {out}:[/red] {exc}")
        return 1
    if not live_view:
        console.print(rounds_table(result.rounds, title=title))
    perplexity = f", test perplexity {math.exp(result.rounds[-1].loss):.2f}" if conf["model"] == "lora" else ""
    console.print(
        f"final accuracy {100 * result.final_accuracy:.2f} %, best {100 * result.best_accuracy:.2f} %{perplexity}, "
        f"{result.seconds_per_round:.2f} s/round"
    )
    for name, path in paths.items():
        console.print(f"  {name:8s} {path}")
    return 0


def _row_line(m) -> str:  # noqa: ANN001 - RoundMetrics
    if m.acc_weighted != m.acc_weighted:  # NaN: not evaluated this round
        return f"round {m.round:4d}  train loss {m.train_loss:.4f}  {m.seconds:.2f} s"
    return (f"round {m.round:4d}  acc {100 * m.acc_weighted:6.2f} % (min {100 * m.acc_min:6.2f}, "
            f"max {100 * m.acc_max:6.2f})  loss {m.loss:.4f}  train loss {m.train_loss:.4f}  {m.seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(main())

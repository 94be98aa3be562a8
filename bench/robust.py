"""Robust aggregation under attack: final accuracy of mean / median / trimmed mean / Krum when
0, 2 or 6 of 20 clients send poisoned updates, and what each rule costs per round.

The setup is PFLlib's MNIST benchmark with a shared global model (``--sharing fedavg``): 20
clients, pathological non-IID with 2 classes each, the 4-layer CNN, batch 10, plain SGD lr 0.005,
1 local epoch, 30 rounds. The attackers are spread evenly over the client ids (clients
``i·n//k`` for i < k). They train honestly, then lie about the result (the attack lives here, as a
thin wrapper around the clients' round results; the engine knows nothing of it):

- ``sign``: the attacker sends ``global − (update − global)``: its own delta, negated;
- ``scale``: the attacker sends ``global + 100·(update − global)``: its delta scaled ×100 (a
  boosted update; the raw weights are not multiplied).

Accuracy is the sample-weighted test accuracy of the final global model on the honest clients'
own test splits. A run whose updates become invalid (non-finite or beyond ±2²⁰: the engine
refuses them and the round cannot finish) is reported as stopped, with its round.

Cost: ``strategy.aggregate`` timed on the same 20 real updates (one honest round of this job from
the initial model), one thread, best of ``--repeats``, as ms and as a ratio to the plain mean
measured in the same run.

    python bench/robust.py --data-dir ../shared/data/mnist10k              # the full grid (long)
    python bench/robust.py --dataset digits --rounds 2 --attackers 0,2     # a smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from config import load_config  # noqa: E402
from fl.datasets import load_dataset  # noqa: E402
from fl.federation import ClientWorker, JobSpec, client_data, client_indices  # noqa: E402
from fl.serialize import model_hash, state_to_bytes  # noqa: E402
from fl.simulation import run_simulation  # noqa: E402
from fl.strategy import InvalidUpdate, Update, build_strategy  # noqa: E402

ATTACKS = {"sign": "sign-flipped delta", "scale": "delta ×100"}

# --- the attack: a wrapper around a client's round result ----------------------------------------------
# Installed on ClientWorker before run_simulation forks its workers, which inherit it (and the
# current ATTACK settings) and so return poisoned updates for the attacking clients.
ATTACK: dict[str, object] = {"kind": None, "clients": frozenset()}
_honest_train_round = ClientWorker.train_round


def _attacked_train_round(self, client, data, round_number, shared, personal, *args, **kwargs):  # noqa: ANN001
    result = _honest_train_round(self, client, data, round_number, shared, personal, *args, **kwargs)
    kind = ATTACK["kind"]
    if kind is None or client not in ATTACK["clients"]:
        return result
    poisoned = {}
    for key, value in result.shared.items():
        start = shared[key].to(value.dtype)
        poisoned[key] = start - (value - start) if kind == "sign" else start + 100.0 * (value - start)
    result.shared = poisoned
    return result


ClientWorker.train_round = _attacked_train_round


def attackers(num_clients: int, count: int) -> frozenset[int]:
    return frozenset(i * num_clients // count for i in range(count))


# --- one run ------------------------------------------------------------------------------------
def job_conf(args: argparse.Namespace, rule: str) -> dict:
    options = {}
    if rule == "krum":
        options = {"krum_f": args.krum_f, "krum_m": args.krum_m}
    elif rule == "trimmed_mean":
        options = {"trim_beta": args.trim_beta}
    return load_config(env={}, overrides={
        "dataset": args.dataset, "data_dir": args.data_dir, "client.amount": args.clients,
        "gobal_epoch": args.rounds, "partition": "pathological", "classes_per_client": args.classes_per_client,
        "local_epoch": args.local_epochs, "learn_rate": args.lr, "BATCH_SIZE": args.batch_size,
        "momentum": args.momentum, "workers": args.workers, "strategy": args.sharing, "aggregation": rule,
        "seed": args.seed, "device": "cpu", "openEval": False, **options})


def run(args: argparse.Namespace, dataset, rule: str, kind: str | None, bad: frozenset[int]) -> str:  # noqa: ANN001
    ATTACK["kind"], ATTACK["clients"] = kind, bad
    rounds_done = []
    try:
        result = run_simulation(job_conf(args, rule), on_round=rounds_done.append, dataset=dataset)
    except (InvalidUpdate, ValueError) as exc:
        return f"stopped r{len(rounds_done) + 1}: {str(exc)[:40]}"
    finally:
        ATTACK["kind"], ATTACK["clients"] = None, frozenset()
    honest = [i for i in range(len(result.num_test)) if i not in bad]
    accs = result.rounds[-1].client_acc
    correct = sum(accs[i] * result.num_test[i] for i in honest)
    return f"{100 * correct / sum(result.num_test[i] for i in honest):.2f}"


# --- aggregation cost -----------------------------------------------------------------------------------
def real_updates(args: argparse.Namespace, dataset) -> tuple[dict, list[Update]]:  # noqa: ANN001
    """One honest round of the job from its initial model: the 20 updates a server would get."""
    job = JobSpec.from_config(job_conf(args, "mean"))
    worker = ClientWorker(job, dataset.num_classes, torch.device("cpu"))
    shared, personal = worker.initial_shared(), worker.initial_personal(0)
    updates = []
    for client, split in enumerate(client_indices(dataset.y.numpy(), job)):
        data = client_data(dataset, split, torch.device("cpu"))
        result = _honest_train_round(worker, client, data, 1, shared, personal)
        updates.append(Update(result.shared, result.stats.num_samples, model_hash(state_to_bytes(result.shared))))
    return shared, updates


def aggregation_ms(args: argparse.Namespace, rule: str, shared: dict, updates: list[Update]) -> float:
    options = {"krum_f": args.krum_f, "krum_m": args.krum_m} if rule == "krum" else (
        {"trim_beta": args.trim_beta} if rule == "trimmed_mean" else {})
    times = []
    for _ in range(args.repeats):
        strategy = build_strategy(args.sharing, rule, **options)
        started = time.perf_counter()
        strategy.aggregate(shared, updates)
        times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default="../shared/data/mnist10k")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--classes-per-client", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--sharing", default="fedavg", help="fedavg (one global model) or fedper")
    p.add_argument("--rules", default="mean,median,trimmed_mean,krum")
    p.add_argument("--attackers", default="0,2,6", help="attacking clients per run, comma-separated")
    p.add_argument("--attacks", default="sign,scale", help="sign and/or scale")
    p.add_argument("--krum-f", type=int, default=6, help="attackers Krum assumes (needs clients >= 2f+3)")
    p.add_argument("--krum-m", type=int, default=1)
    p.add_argument("--trim-beta", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=5, help="timings of aggregate per rule (best counts)")
    p.add_argument("--workers", type=int, default=0, help="training processes (0 = one per core)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    console = Console()
    if not console.is_terminal:  # a log file: room for the whole table
        console = Console(width=170)
    rules = args.rules.split(",")
    kinds = args.attacks.split(",")
    counts = [int(c) for c in args.attackers.split(",")]
    unknown = sorted(set(kinds) - set(ATTACKS))
    if unknown:
        p.error(f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
    dataset = load_dataset(args.dataset, args.data_dir)
    scenarios = [(None, 0)] if 0 in counts else []
    scenarios += [(kind, c) for kind in kinds for c in counts if c > 0]

    torch.set_num_threads(1)  # timings as on a supernode with torch_threads = 1
    console.print(f"timing aggregate on {args.clients} real updates …")
    shared, updates = real_updates(args, dataset)
    cost = {rule: aggregation_ms(args, rule, shared, updates) for rule in dict.fromkeys(["mean", *rules])}
    torch.set_num_threads(os.cpu_count() or 1)

    accuracy: dict[tuple[str, str | None, int], str] = {}
    for rule in rules:
        for kind, count in scenarios:
            label = "no attack" if kind is None else f"{count} × {ATTACKS[kind]}"
            console.print(f"running {rule}, {label} …")
            started = time.perf_counter()
            accuracy[rule, kind, count] = run(args, dataset, rule, kind, attackers(args.clients, count))
            console.print(f"  {accuracy[rule, kind, count]}  ({time.perf_counter() - started:.0f} s)")

    table = Table(title=(
        f"{args.dataset} ({len(dataset)} samples), {args.clients} clients, pathological {args.classes_per_client} "
        f"classes each, {args.sharing} sharing, {args.rounds} rounds, {args.local_epochs} local epoch, "
        f"lr {args.lr}, batch {args.batch_size}: final accuracy % of the honest clients"))
    table.add_column("rule")
    for kind, count in scenarios:
        table.add_column("no attack" if kind is None else f"{count}/{args.clients} {kind}", justify="right")
    table.add_column("aggregate ms", justify="right")
    table.add_column("× mean", justify="right")
    for rule in rules:
        name = {"krum": f"krum (f={args.krum_f}, m={args.krum_m})",
                "trimmed_mean": f"trimmed_mean (β={args.trim_beta})"}.get(rule, rule)
        table.add_row(name, *[accuracy[rule, kind, count] for kind, count in scenarios],
                      f"{cost[rule]:.1f}", f"{cost[rule] / cost['mean']:.1f}×")
    console.print(table)
    console.print(f"attacks: sign = the attacker sends global − (update − global) (its delta negated); "
                  f"scale = global + 100·(update − global) (its delta ×100). Attackers: clients i·n//k. "
                  f"Cost: best of {args.repeats} aggregate() calls on the same {len(updates)} real updates, "
                  f"1 thread.")
    console.print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, "
                  f"{platform.processor() or platform.machine()}, workers={args.workers or 'auto'}")


if __name__ == "__main__":
    main()

"""Differential privacy's price in accuracy: FedAvg and FedPer without DP, with central DP at
ε = 8, 3 and 1 (δ = 1e-5) under fixed and adaptive clipping, and with local DP, in one table
that also says what each run actually spent.

Setup (PFLlib's MNIST benchmark, as bench/accuracy.py and bench/robust.py, but lr 0.02): MNIST
10k, 20 clients, pathological non-IID with 2 classes each, 75/25 train/test per client, the
4-layer CNN (582,026 parameters), 1 local epoch, batch 10, plain SGD lr 0.02 (momentum 0), 30
rounds, the plain mean under each row's sharing (``fedavg``: the whole model; ``fedper``: the
base layers, each client keeping its own head, which DP never touches). Under DP every update
weighs the same, its delta from the global model is clipped to the L2 norm C = 0.01
(``dp_clip``), and the noise multiplier z is calibrated (Opacus's RDP accountant) so that the
job's 30 rounds spend at most the row's target ε (fl/privacy.py; README "Differential privacy"):

- ``none``: no DP (updates weighted by their sample counts, as always without DP);
- ``central fixed``: ``dp=central``: each delta is clipped to C, N(0, (z·C/n)²) is added to the
  mean of the n = 20 clipped updates; user-level DP (one client's data in or out), every client
  asked every round (sampling rate 1, no amplification claimed);
- ``central adaptive``: the same with ``dp_clipping=adaptive`` (Andrew et al.: C follows the
  ``dp_target_quantile`` 0.5 of the update norms at ``dp_clip_lr`` 0.2, from a noised count of
  unclipped updates, ``dp_count_noise`` 0 = automatic; C starts at ``--clip``). Where the
  configuration does not know ``dp_clipping`` (before that feature), the row says "not
  available: <reason>" instead of failing the run;
- ``local``: ``dp=local`` at ``--local-epsilon`` (8): each client clips its delta to C and adds
  N(0, (z·C)²) itself; accounted per client with z/2 (its clipped delta can move by 2C), so z is
  twice the central one at the same ε, and the mean of 20 such updates carries 2z·C/√20, ~9×
  central DP's noise per coordinate.

Why lr 0.02 and C 0.01 (not accuracy.py's lr 0.005 and the default C 1.0). Central noise has
standard deviation z·C/n on each of D ≈ 5.8·10⁵ weights, a norm of z·C·√D/n ≈ 133·C a round at
ε = 8 (z ≈ 3.49; 8.18 at ε = 3, 22.2 at ε = 1) against at most C of signal. That ratio does not
depend on C, but the damage to the weights does: with C = 1.0 each round adds 0.17 per weight
(ε = 8) to layers initialised within ±0.03 (fc1), and the models blow up. Round-1 update norms
here are ~0.5 at lr 0.005, ~0.8 at lr 0.02 and 1.2–1.75 at lr 0.05, so any C ≤ 0.1 clips every
update. A quick exploration (30 rounds, central fixed, one run each; "diverged": a client's
update became non-finite or beyond ±2²⁰ and the engine refused it):

- no DP, FedAvg: lr 0.005 ~80 % (bench/robust.py's mean), lr 0.02 91.5 %, lr 0.05 93.2 %;
- lr 0.05, C 0.1: FedAvg diverged at ε = 8 and at ε = 1 (the noisy model trained at a high lr);
- FedAvg at ε = 8, final (best) %: lr 0.005 C 0.1 23.8 (28.9), lr 0.005 C 0.03 23.8 (23.8),
  lr 0.02 C 0.1 7.5 (17.0), C 0.03 12.9 (23.2), C 0.01 14.9 (15.4): near chance whatever the
  setting: 20 clients are far too few for user-level DP on a model this size;
- lr 0.02, C 0.03: FedPer 95.3 % at ε = 8, but at ε = 1 (noise 0.033 a weight a round) FedPer
  and FedAvg diverged around round 10;
- lr 0.02, C 0.01: FedPer 94.4 % at ε = 8; at ε = 1 FedAvg 15.7 %, FedPer 94.6 %, no divergence.

So lr 0.02 (the no-DP runs learn well: ~91 % FedAvg in 30 rounds) and C 0.01 (the smallest
noise that every ε runs through: 0.0017 a weight a round at ε = 8, 0.011 at ε = 1). The figures
to read are FedPer's: its private heads keep learning on a base DP barely moves; FedAvg under DP
stays near chance at any ε here. Adaptive clipping starts from the same C but, with every update
clipped, raises it by e^0.1 a round towards the median update norm (~0.5–1), and the noise, z·C/n,
grows with it: expect it to end at a larger C, lose accuracy late, or diverge. ``--lr`` and
``--clip`` change the settings.

Columns:

- ``sharing``: fedavg (one global model) or fedper (shared base, personal heads);
- ``mechanism``: none / central fixed / central adaptive / local;
- ``target ε``: the job's ``dp_epsilon`` (δ = ``--delta``), "–" without DP;
- ``z``: the noise multiplier of the last round's privacy record (calibrated to the target);
- ``C (last)``: the clip norm of the last round's record (moves under adaptive clipping);
- ``ε spent``: the ε of the last round's record (Opacus's RDP accountant, after all its rounds);
- ``final acc %``: sample-weighted accuracy over all clients' own test splits after the last
  round (``SimulationResult.final_accuracy``; FedPer: the shared base with each client's head);
- ``best acc %``: the best round by the same measure (every round is evaluated);
- ``s/round``: mean seconds a round over rounds 2+ (training and evaluating all clients;
  round 1 also starts the worker processes);
- ``note``: "not available: …" (the configuration refused the row's settings), "diverged in
  round k: …" (training blew up; the other columns are the rounds before), "stopped after round
  k: …" (the budget ran out early), or "failed: …" (the run raised; the script then exits 1).

DP noise comes from the OS's CSPRNG, never seeded: DP rows differ from run to run (the
partition, the initial model and the clients' batches repeat with ``--seed``). Commands:

    python bench/privacy.py                                            # the full table (16 runs)
    python bench/privacy.py --dataset digits --rounds 3 --clients 10   # a smoke run (~1 min)
    python bench/privacy.py --sharing fedper --epsilons 8 --mechanisms none,fixed,adaptive
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from config import ConfigError, load_config  # noqa: E402
from fl.datasets import Dataset, canonical_name, load_dataset  # noqa: E402
from fl.simulation import RoundMetrics, SimulationResult, run_simulation  # noqa: E402
from fl.strategy import InvalidUpdate  # noqa: E402

MECHANISMS = {"none": "none", "fixed": "central fixed", "adaptive": "central adaptive", "local": "local"}
DEFAULT_DATA_DIR = os.path.normpath(ROOT.parent / "shared" / "data" / "mnist10k")


@dataclass
class Row:
    """One run of the table: its settings and, once run, its result or why there is none."""

    sharing: str
    mechanism: str  # a key of MECHANISMS
    target_epsilon: float | None  # None: no DP
    result: SimulationResult | None = None
    rounds: list[RoundMetrics] = field(default_factory=list)  # as they finished (kept when a run diverges)
    note: str = ""
    failed: bool = False

    @property
    def label(self) -> str:
        eps = "" if self.target_epsilon is None else f" ε={self.target_epsilon:g}"
        return f"{self.sharing}, {MECHANISMS[self.mechanism]}{eps}"


# --- the grid ---------------------------------------------------------------------------------------
def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def plan(sharings: list[str], mechanisms: list[str], epsilons: list[float], local_epsilon: float) -> list[Row]:
    """The rows, sharing by sharing: no DP, central fixed per ε, central adaptive per ε, local."""
    rows: list[Row] = []
    for sharing in sharings:
        for mechanism in mechanisms:
            if mechanism == "none":
                rows.append(Row(sharing, mechanism, None))
            elif mechanism == "local":
                rows.append(Row(sharing, mechanism, local_epsilon))
            else:
                rows.extend(Row(sharing, mechanism, eps) for eps in epsilons)
    return rows


def dp_overrides(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys that make ``row``'s mechanism (none for no DP)."""
    if row.mechanism == "none":
        return {}
    options: dict[str, Any] = {"dp": "local" if row.mechanism == "local" else "central",
                               "dp_epsilon": row.target_epsilon, "dp_delta": args.delta, "dp_clip": args.clip}
    if row.mechanism == "adaptive":
        options["dp_clipping"] = "adaptive"
    return options


def job_conf(args: argparse.Namespace, row: Row) -> dict[str, Any]:
    """The job's validated configuration; raises ConfigError when a key or value is refused."""
    return load_config(env={}, overrides={
        "dataset": args.dataset, "data_dir": args.data_dir, "client.amount": args.clients,
        "gobal_epoch": args.rounds, "partition": "pathological", "classes_per_client": args.classes_per_client,
        "local_epoch": args.local_epochs, "learn_rate": args.lr, "BATCH_SIZE": args.batch_size,
        "momentum": args.momentum, "workers": args.workers, "strategy": row.sharing, "seed": args.seed,
        "device": "cpu", **dp_overrides(row, args)})


# --- one run ------------------------------------------------------------------------------------------
def short_reason(exc: BaseException) -> str:
    """The first clause of an error (a ConfigError for an unknown key lists every known key)."""
    return str(exc).split("; known keys")[0].strip()


def run_row(args: argparse.Namespace, dataset: Dataset, row: Row) -> None:
    """Run ``row``'s job, filling in its result, or its note when it cannot run."""
    try:
        conf = job_conf(args, row)
    except ConfigError as exc:
        row.note = f"not available: {short_reason(exc)}"
        return
    try:
        row.result = run_simulation(conf, on_round=row.rounds.append, dataset=dataset)
    except InvalidUpdate as exc:  # training blew up (the noise made a client's update non-finite)
        row.note = f"diverged in round {len(row.rounds) + 1}: {short_reason(exc)}"
        return
    except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others' results
        traceback.print_exc()
        row.note, row.failed = f"failed: {type(exc).__name__}: {short_reason(exc)}", True
        return
    if row.result.stopped:
        row.note = f"stopped after round {len(row.result.rounds)}: {row.result.stopped}"


def last_privacy(rounds: list[RoundMetrics]) -> dict[str, str]:
    """The privacy record of the last round that finished ({} without DP or without rounds)."""
    return (rounds[-1].privacy or {}) if rounds else {}


def best_accuracy(rounds: list[RoundMetrics]) -> float | None:
    """The best evaluated round's sample-weighted accuracy (None before any)."""
    evaluated = [r.acc_weighted for r in rounds if not math.isnan(r.acc_weighted)]
    return max(evaluated) if evaluated else None


def seconds_per_round(rounds: list[RoundMetrics]) -> float:
    """Mean seconds a round over rounds 2+ (round 1 also starts the worker processes)."""
    later = rounds[1:] or rounds
    return sum(r.seconds for r in later) / len(later)


def percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def summary(row: Row) -> str:
    """One progress line for ``row`` after its run."""
    privacy = last_privacy(row.rounds)
    parts = [f"final {percent(row.result.final_accuracy)} %" if row.result and row.result.rounds else "",
             f"best {percent(best_accuracy(row.rounds))} %" if row.rounds else "",
             f"z {float(privacy['noise_multiplier']):.3g}, ε {float(privacy['epsilon']):.3g}" if privacy else "",
             row.note]
    return ", ".join(part for part in parts if part) or "no rounds"


# --- the table ----------------------------------------------------------------------------------------
def cells(row: Row) -> list[str]:
    """``row``'s cells after sharing and mechanism ("–" where a figure does not apply). A run
    that diverged shows the privacy record and best accuracy of the rounds it finished."""
    target = "–" if row.target_epsilon is None else f"{row.target_epsilon:g}"
    if not row.rounds:
        return [target, "–", "–", "–", "–", "–", "–", row.note]
    privacy = last_privacy(row.rounds)
    z = f"{float(privacy['noise_multiplier']):.3f}" if "noise_multiplier" in privacy else "–"
    clip = f"{float(privacy['clip_norm']):.3g}" if "clip_norm" in privacy else "–"
    spent = f"{float(privacy['epsilon']):.3f}" if "epsilon" in privacy else "–"
    final = percent(row.result.final_accuracy) if row.result is not None and row.result.rounds else "–"
    return [target, z, clip, spent, final, percent(best_accuracy(row.rounds)),
            f"{seconds_per_round(row.rounds):.2f}", row.note]


def results_table(args: argparse.Namespace, dataset: Dataset, rows: list[Row]) -> Table:
    table = Table(title=(
        f"{args.dataset} ({len(dataset)} samples), {args.clients} clients, pathological {args.classes_per_client} "
        f"classes each, {args.rounds} rounds, {args.local_epochs} local epoch, lr {args.lr}, batch "
        f"{args.batch_size}, momentum {args.momentum:g}; DP: clip C = {args.clip:g}, δ = {args.delta:g}, "
        f"z calibrated to the target ε over the {args.rounds} rounds"))
    for name in ("sharing", "mechanism"):
        table.add_column(name)
    for name in ("target ε", "z", "C (last)", "ε spent", "final acc %", "best acc %", "s/round"):
        table.add_column(name, justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(row.sharing, MECHANISMS[row.mechanism], *cells(row))
    return table


# --- main -------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="mnist (the table) or digits (a smoke run)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="MNIST's files (default: the repo's ../shared/data/mnist10k)")
    p.add_argument("--sharing", default="fedavg,fedper", help="fedavg and/or fedper")
    p.add_argument("--mechanisms", default="none,fixed,adaptive,local", help=f"any of {','.join(MECHANISMS)}")
    p.add_argument("--epsilons", default="8,3,1", help="target ε of the central rows")
    p.add_argument("--local-epsilon", type=float, default=8.0, help="target ε of the local DP row")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip", type=float, default=0.01, help="C, the clip norm (adaptive: its start)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--classes-per-client", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0, help="training processes (0 = one per core)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    unknown = sorted(set(csv_list(args.mechanisms)) - set(MECHANISMS))
    if unknown:
        p.error(f"unknown mechanism(s) {unknown}; choose from {', '.join(MECHANISMS)}")
    bad = sorted(set(csv_list(args.sharing)) - {"fedavg", "fedper"})
    if bad:
        p.error(f"unknown sharing {bad}; choose fedavg and/or fedper")
    try:
        args.epsilons = [float(e) for e in csv_list(args.epsilons)]
    except ValueError:
        p.error(f"--epsilons: expected numbers, got {args.epsilons!r}")
    args.dataset = canonical_name(args.dataset)
    return args


def main() -> int:
    args = parse_args()
    console = Console()
    if not console.is_terminal:  # a log file: room for the whole table
        console = Console(width=190)
    dataset = load_dataset(args.dataset, args.data_dir)
    rows = plan(csv_list(args.sharing), csv_list(args.mechanisms), args.epsilons, args.local_epsilon)
    started = time.perf_counter()
    for i, row in enumerate(rows, 1):
        console.print(f"[{i}/{len(rows)}] {row.label} …")
        t0 = time.perf_counter()
        run_row(args, dataset, row)
        console.print(f"  {summary(row)}  ({time.perf_counter() - t0:.0f} s)")
    console.print(results_table(args, dataset, rows))
    console.print(f"{len(rows)} runs in {(time.perf_counter() - started) / 60:.1f} min on {machine()}, "
                  f"workers={args.workers or 'auto'}")
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

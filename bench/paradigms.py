"""The ways to learn side by side: FedPer vs distillation (one architecture, and mixed ones) vs
split learning vs SplitFed (vs U-shaped split learning), on the same clients, in one table of
accuracy, bytes on the wire and seconds per round.

Setup: MNIST 10k (``--data-dir``, default ``../shared/data/mnist10k``), 20 clients, pathological
non-IID with 2 classes each, 75/25 train/test per client, 1 local epoch, batch 32, plain SGD
lr 0.05 (momentum 0), 20 rounds, the plain sample-weighted mean, the same seed for every row
(so the same partition, initial models and batch order), in the standalone simulation
(``fl.simulation.run_simulation``; each row is one job). Rows:

- ``FedPer``: ``strategy=fedper``, the 4-layer CNN (``cnn_mnist``, 582,026 parameters); the base
  (conv1, conv2, fc1) is shared, each client keeps its head (fc);
- ``distill, same arch``: ``strategy=distill``, every client a CNN; each keeps its whole model and
  sends only its logits on the public set (``distill_public`` = 500 MNIST samples held out of every
  client's data), ``distill_alpha`` 0.5, ``distill_l2`` 1 (fl/distill.py);
- ``distill, mixed arch``: the same with ``model=cnn_mnist,mlp``: even clients a CNN, odd ones the
  MLP 784→128→64→10; the note gives each architecture's accuracy;
- ``local-only twin``: the first distillation row with ``distill_alpha=0`` (same public set held
  out, same data, seeds and steps, but the consensus is never used: every client trains alone;
  it still sends its logits, unused, so its bytes are those of distillation);
- ``split``: ``strategy=split``, the CNN cut after ``split_layers`` = 1 layer (``--split-layers``):
  conv1 on the edge node (personal), conv2, fc1, fc on its supernode (each client's copy averaged
  every round);
- ``SplitFed``: ``strategy=splitfed``: the same, the lower layer averaged too (one global model:
  its gradients are those of FedAvg's);
- ``U-shaped split``: ``strategy=split, split_labels=edge``: conv1 and the head fc (and the
  labels) on the edge node, conv2 and fc1 on the supernode.

Columns:

- ``final acc %``: sample-weighted accuracy over all clients' own test splits after the last round
  (``SimulationResult.final_accuracy``: each client's model = the global shared state + its
  personal tensors);
- ``up MB`` / ``down MB`` / ``total MB``: bytes on the wire per round, all clients together,
  10⁶ bytes to the MB, the mean over the rounds (every round carries the same here);
- ``split link MB``: the part of the total that is split learning's stream (per-batch messages
  and the trained upper layers handed back when an edge node finishes);
- ``× FedPer bytes``: the row's total over FedPer's;
- ``s/round``: the median wall seconds of rounds 2+ (training and evaluating all clients; round 1
  also starts the worker processes); ``fastest s``: the fastest of those rounds; ``× FedPer s``:
  the row's fastest round over FedPer's. Every round of a row does the same work, and every row
  uses as many worker processes (one per core), so the fastest round is the figure least inflated
  by anything else running on the machine; the median shows what a round took in this run (the
  progress lines give the load average after each row: about the worker count when nothing else
  runs).

How the bytes are measured. What travels is safetensors bytes (``fl.serialize.state_to_bytes``),
counted where the simulation has them, never estimated from parameter counts:

- the model traffic: the bench wraps the simulation's task runner (``fl.simulation._Runner.map``)
  and, for every client's training task of every round, adds the length of the global shared
  state's bytes the task carries (down: what an edge node downloads) and of the update's bytes it
  returns (up: what the edge node uploads). Each row checks that total against the final states'
  own sizes (clients × 2 × ``len(state_to_bytes(result.global_state))`` a round);
- split learning's stream: the bench wraps ``fl.split.LocalLink``'s ``step``, ``forward``,
  ``backward`` and ``finish`` and counts, per call, the safetensors bytes of the message the
  network link (``node.roles.split.StreamLink``) would send and of the answer: ``{activations,
  labels}`` up and ``{grad}`` down a step (labels on the supernode); ``{activations}`` up,
  ``{outputs}`` down, ``{grad}`` up, ``{grad}`` down a U-shaped batch; at ``finish`` nothing up (a
  flag) and the trained upper layers down. A safetensors blob's length depends only on its tensors' names,
  dtypes and shapes (a JSON header, then the raw data), so each distinct (names, dtypes, shapes)
  is encoded once with ``state_to_bytes`` and its length reused. Training runs in forked worker
  processes (one per core, as for every row, so the seconds compare); the wrapped methods are
  inherited by fork and add into counters in shared memory (``multiprocessing.Array``), read by
  the bench after each round.

Not counted: gRPC/protobuf framing, TLS, the stream's opening message (ids and the model's hash),
the loss each step's answer carries (one float), the ledger's transactions and blocks, and a
separate download for evaluation (each client is evaluated with the round's new global state,
which it receives anyway as the next round's download: one download a client and round counted).

Nor do the seconds include moving any byte: the simulation hands states between local processes,
and split learning's link is a direct call (``LocalLink``), so ``s/round`` is compute (training,
evaluation, aggregation, encoding) alone. Over a network, split learning also waits one round trip
per batch.

    python bench/paradigms.py                      # the table (~5 min on an idle 2-core machine)
    python bench/paradigms.py --rounds 10 --clients 20 --rows fedper,split
    python bench/paradigms.py --quick              # a smoke run: digits, 4 clients, 2 rounds
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench.machine import machine  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import fl.simulation as simulation  # noqa: E402
from config import load_config  # noqa: E402
from fl.datasets import Dataset, canonical_name, load_dataset  # noqa: E402
from fl.serialize import state_to_bytes  # noqa: E402
from fl.simulation import RoundMetrics, SimulationResult, run_simulation  # noqa: E402
from fl.split import LocalLink  # noqa: E402

DEFAULT_DATA_DIR = os.path.normpath(ROOT.parent / "shared" / "data" / "mnist10k")
# Per dataset: the one architecture, and the second one of the mixed distillation row.
ARCHITECTURES = {"mnist": ("cnn_mnist", "mlp"), "fashionmnist": ("cnn_mnist", "mlp"), "digits": ("mlp", "mlp_small")}
MB = 1e6


# --- the rows ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paradigm:
    key: str  # what --rows names
    label: str
    overrides: Callable[[str, str], dict[str, Any]]  # (architecture, second architecture) -> config keys


PARADIGMS = (
    Paradigm("fedper", "FedPer", lambda a, b: {"strategy": "fedper", "model": a}),
    Paradigm("distill", "distill, same arch", lambda a, b: {"strategy": "distill", "model": a}),
    Paradigm("distill-mixed", "distill, mixed arch", lambda a, b: {"strategy": "distill", "model": f"{a},{b}"}),
    Paradigm("twin", "local-only twin (α=0)", lambda a, b: {"strategy": "distill", "model": a, "distill_alpha": 0.0}),
    Paradigm("split", "split", lambda a, b: {"strategy": "split", "model": a}),
    Paradigm("splitfed", "SplitFed", lambda a, b: {"strategy": "splitfed", "model": a}),
    Paradigm("u-split", "U-shaped split", lambda a, b: {"strategy": "split", "model": a, "split_labels": "edge"}),
)
BY_KEY = {p.key: p for p in PARADIGMS}
SPLIT_ROWS = ("split", "splitfed", "u-split")


@dataclass
class Row:
    paradigm: Paradigm
    conf: dict[str, Any] | None = None
    result: SimulationResult | None = None
    rounds: list[RoundMetrics] = field(default_factory=list)
    model_up: list[int] = field(default_factory=list)  # per round, bytes
    model_down: list[int] = field(default_factory=list)
    link_up: list[int] = field(default_factory=list)
    link_down: list[int] = field(default_factory=list)
    link_messages: list[int] = field(default_factory=list)
    wall: float = 0.0
    load: float = 0.0  # the 1-minute load average when the row finished
    note: str = ""
    failed: bool = False

    def mean(self, values: list[int]) -> float:
        return sum(values) / len(values) if values else 0.0

    @property
    def up(self) -> float:
        return self.mean(self.model_up) + self.mean(self.link_up)

    @property
    def down(self) -> float:
        return self.mean(self.model_down) + self.mean(self.link_down)

    @property
    def total(self) -> float:
        return self.up + self.down

    @property
    def link(self) -> float:
        return self.mean(self.link_up) + self.mean(self.link_down)

    @property
    def seconds(self) -> float:
        """The median round over rounds 2+ (round 1 also starts the worker processes; the median
        shrugs off a round slowed by something else on the machine)."""
        later = self.rounds[1:] or self.rounds
        return statistics.median(r.seconds for r in later) if later else math.nan

    @property
    def fastest(self) -> float:
        """The fastest of rounds 2+: every round does the same work, so this is the figure that
        something else running on the machine inflates least."""
        later = self.rounds[1:] or self.rounds
        return min(r.seconds for r in later) if later else math.nan


# --- measuring the bytes -----------------------------------------------------------------------------
_SIZES: dict[tuple, int] = {}  # (name, dtype, shape)… -> safetensors length (copied into forked workers)


def wire_size(**tensors: torch.Tensor) -> int:
    """The length of ``state_to_bytes(tensors)``: encoded once per distinct names, dtypes and
    shapes (the length depends on nothing else), then looked up."""
    key = tuple((name, str(t.dtype), tuple(t.shape)) for name, t in sorted(tensors.items()))
    size = _SIZES.get(key)
    if size is None:
        size = _SIZES[key] = len(state_to_bytes(tensors))
    return size


class WireMeter:
    """Counts the round's bytes: the model traffic in this process, split learning's link in
    whichever process trains (shared-memory counters, inherited by forked workers)."""

    UP, DOWN, MESSAGES = range(3)

    def __init__(self) -> None:
        self.link = multiprocessing.get_context("fork").Array("q", 3)
        self.model_up = self.model_down = 0

    def add_link(self, up: int, down: int, messages: int = 1) -> None:
        with self.link.get_lock():
            self.link[self.UP] += up
            self.link[self.DOWN] += down
            self.link[self.MESSAGES] += messages

    def take(self) -> tuple[int, int, int, int, int]:
        """(model up, model down, link up, link down, link messages) since the last take."""
        with self.link.get_lock():
            link = tuple(self.link[:])
            self.link[:] = [0, 0, 0]
        counts = (self.model_up, self.model_down, *link)
        self.model_up = self.model_down = 0
        return counts

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap the simulation's task runner and ``LocalLink`` for the duration of one run."""
        meter = self
        runner_map = simulation._Runner.map
        train_task = simulation._train_task
        step, forward, backward, finish = LocalLink.step, LocalLink.forward, LocalLink.backward, LocalLink.finish

        def counted_map(runner: Any, fn: Callable[[Any], Any], tasks: Any) -> Iterator[Any]:
            if fn is not train_task:  # evaluation: nothing travels
                return runner_map(runner, fn, tasks)
            tasks = list(tasks)
            for task in tasks:  # (client, round, global shared bytes, personal bytes, …)
                if not isinstance(task[2], bytes):
                    raise TypeError("fl.simulation's training task no longer carries the global state's bytes third; "
                                    "bench/paradigms.py must follow it")
                meter.model_down += len(task[2])
            return (meter._up(outcome) for outcome in runner_map(runner, fn, tasks))

        def counted_step(link: LocalLink, activations: torch.Tensor,
                         labels: torch.Tensor) -> tuple[torch.Tensor, float]:
            grad, loss = step(link, activations, labels)
            meter.add_link(wire_size(activations=activations, labels=labels), wire_size(grad=grad))
            return grad, loss

        def counted_forward(link: LocalLink, activations: torch.Tensor) -> torch.Tensor:
            outputs = forward(link, activations)
            meter.add_link(wire_size(activations=activations), wire_size(outputs=outputs))
            return outputs

        def counted_backward(link: LocalLink, grad_outputs: torch.Tensor) -> torch.Tensor:
            grad = backward(link, grad_outputs)
            meter.add_link(wire_size(grad=grad_outputs), wire_size(grad=grad))
            return grad

        def counted_finish(link: LocalLink) -> dict[str, torch.Tensor]:
            state = finish(link)
            meter.add_link(0, wire_size(**state))  # (the finish message carries no tensors up)
            return state

        simulation._Runner.map = counted_map
        LocalLink.step, LocalLink.forward = counted_step, counted_forward
        LocalLink.backward, LocalLink.finish = counted_backward, counted_finish
        try:
            yield
        finally:
            simulation._Runner.map = runner_map
            LocalLink.step, LocalLink.forward, LocalLink.backward, LocalLink.finish = step, forward, backward, finish

    def _up(self, outcome: Any) -> Any:
        self.model_up += len(outcome.shared)  # the update's bytes, as the worker encoded them
        return outcome


# --- one run -----------------------------------------------------------------------------------------
def job_conf(args: argparse.Namespace, paradigm: Paradigm) -> dict[str, Any]:
    first, second = ARCHITECTURES[args.dataset]
    return load_config(env={}, overrides={
        "dataset": args.dataset, "data_dir": args.data_dir, "client.amount": args.clients,
        "gobal_epoch": args.rounds, "partition": "pathological", "classes_per_client": args.classes_per_client,
        "local_epoch": args.local_epochs, "learn_rate": args.lr, "BATCH_SIZE": args.batch_size,
        "momentum": 0.0, "workers": args.workers, "seed": args.seed, "device": "cpu",
        **({"split_layers": args.split_layers} if paradigm.key in SPLIT_ROWS else {}),
        **paradigm.overrides(first, second)})


def run_row(args: argparse.Namespace, dataset: Dataset, row: Row) -> None:
    meter = WireMeter()

    def on_round(metrics: RoundMetrics) -> None:
        row.rounds.append(metrics)
        counts = meter.take()
        for series, value in zip((row.model_up, row.model_down, row.link_up, row.link_down, row.link_messages), counts):
            series.append(value)

    started = time.perf_counter()
    try:
        row.conf = job_conf(args, row.paradigm)
        with meter.installed():
            row.result = run_simulation(row.conf, on_round=on_round, dataset=dataset)
    except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others' results
        traceback.print_exc()
        row.note, row.failed = f"failed: {type(exc).__name__}: {str(exc)[:120]}", True
        return
    finally:
        row.wall = time.perf_counter() - started
        row.load = os.getloadavg()[0]
    row.note = "; ".join(filter(None, [check_model_bytes(row), architecture_note(row)]))


def check_model_bytes(row: Row) -> str:
    """Cross-check the measured model traffic: every client downloads the global shared state and
    uploads an update of the same tensors, every round. A mismatch marks the row failed."""
    assert row.result is not None
    expected = row.result.job.num_clients * len(state_to_bytes(row.result.global_state))
    wrong = [r + 1 for r, (up, down) in enumerate(zip(row.model_up, row.model_down))
             if up != expected or down != expected]
    if wrong:
        row.failed = True
        return f"model bytes in rounds {wrong[:5]} differ from {expected} (clients × the global state's size)"
    return ""


def architecture_note(row: Row) -> str:
    """A job of several architectures: each one's sample-weighted accuracy on its clients."""
    assert row.result is not None
    job = row.result.job
    if len(job.architectures) < 2 or not row.result.rounds[-1].client_acc:
        return ""
    parts = []
    for name in job.architectures:
        clients = [i for i in range(job.num_clients) if job.architecture(i) == name]
        tests = [row.result.num_test[i] for i in clients]
        correct = sum(row.result.rounds[-1].client_acc[i] * row.result.num_test[i] for i in clients)
        parts.append(f"{name} {100 * correct / sum(tests):.2f} %")
    return ", ".join(parts)


# --- the table ---------------------------------------------------------------------------------------
def percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference or math.isnan(value) or math.isnan(reference):
        return "–"
    return f"{value / reference:.3g}"


def paradigms_table(args: argparse.Namespace, dataset: Dataset, rows: list[Row]) -> Table:
    """The table: one row per paradigm, its ratios against the FedPer row (when it ran)."""
    reference = next((r for r in rows if r.paradigm.key == "fedper" and r.result is not None), None)
    table = Table(title=(
        f"{args.dataset} ({len(dataset)} samples), {args.clients} clients, pathological "
        f"{args.classes_per_client} classes each, {args.rounds} rounds, {args.local_epochs} local epoch, "
        f"lr {args.lr:g}, batch {args.batch_size}, seed {args.seed}, split after {args.split_layers} layer(s); "
        f"bytes: safetensors on the wire per round, all clients, up + down (MB = 10⁶ B)"))
    table.add_column("paradigm")
    table.add_column("model(s)")
    for name in ("final acc %", "up MB", "down MB", "total MB", "split link MB", "× FedPer bytes", "s/round",
                 "fastest s", "× FedPer s"):
        table.add_column(name, justify="right")
    table.add_column("note")
    for row in rows:
        model = row.conf["model"] if row.conf else "–"
        if row.result is None or not row.rounds:
            table.add_row(row.paradigm.label, model, *["–"] * 9, row.note)
            continue
        table.add_row(
            row.paradigm.label, model, percent(row.result.final_accuracy),
            f"{row.up / MB:.2f}", f"{row.down / MB:.2f}", f"{row.total / MB:.2f}",
            f"{row.link / MB:.2f}" if row.link else "0",
            ratio(row.total, reference.total if reference else None), f"{row.seconds:.2f}", f"{row.fastest:.2f}",
            ratio(row.fastest, reference.fastest if reference else None), row.note)
    return table


# --- main --------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: digits, 4 clients, 2 rounds, batch 16")
    p.add_argument("--dataset", default=None, help="mnist (default; digits with --quick)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="MNIST's IDX files (default ../shared/data/mnist10k)")
    p.add_argument("--rows", default=",".join(BY_KEY), help=f"which rows, any of {','.join(BY_KEY)}")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 20; 2 with --quick)")
    p.add_argument("--clients", type=int, default=None, help="clients (default 20; 4 with --quick)")
    p.add_argument("--classes-per-client", type=int, default=2)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=None, help="default 32; 16 with --quick")
    p.add_argument("--workers", type=int, default=0,
                   help="training processes, the same for every row (0: one per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-layers", type=int, default=1,
                   help="split rows: layers below the cut, on the edge node (default 1: the CNN's conv1)")
    p.add_argument("--tables", default="mnist,lora", help="which tables: mnist (the paradigms), lora, or both")
    p.add_argument("--model-path", default=str(ROOT / "models" / "tiny-stdlib-lm"),
                   help="LoRA table: the base model (pretrained there first when missing)")
    p.add_argument("--pretrain-minutes", type=float, default=3.0, help="LoRA table: pretraining time when missing")
    p.add_argument("--lora-clients", type=int, default=4)
    p.add_argument("--lora-rounds", type=int, default=None, help="default 5; 2 with --quick")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-lr", type=float, default=0.01, help="AdamW learning rate of the adapters")
    p.add_argument("--block-size", type=int, default=None, help="LoRA: tokens a sequence (default 128; 32 --quick)")
    args = p.parse_args()
    quick = args.quick
    try:
        args.dataset = canonical_name(args.dataset or ("digits" if quick else "mnist"))
    except ValueError as exc:
        p.error(f"--dataset: {exc}")
    args.rounds = args.rounds or (2 if quick else 20)
    args.clients = args.clients or (4 if quick else 20)
    args.batch_size = args.batch_size or (16 if quick else 32)
    args.lora_rounds = args.lora_rounds or (2 if quick else 5)
    args.block_size = args.block_size or (32 if quick else 128)
    if args.dataset not in ARCHITECTURES:
        p.error(f"--dataset: one of {', '.join(ARCHITECTURES)}")
    args.tables = [name.strip() for name in args.tables.split(",") if name.strip()]
    if not args.tables or any(name not in ("mnist", "lora") for name in args.tables):
        p.error("--tables: mnist, lora or mnist,lora")
    args.rows = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = [key for key in args.rows if key not in BY_KEY]
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose from {', '.join(BY_KEY)}")
    return args


def mnist_paradigms(args: argparse.Namespace, console: Console) -> tuple[Table, bool]:
    """Run every selected paradigm on the same clients; the table and whether any row failed."""
    dataset = load_dataset(args.dataset, args.data_dir)
    rows = [Row(BY_KEY[key]) for key in args.rows]
    for i, row in enumerate(rows, 1):
        console.print(f"[{i}/{len(rows)}] {row.paradigm.label} …")
        run_row(args, dataset, row)
        done = (f"final {percent(row.result.final_accuracy)} %, {row.total / MB:.2f} MB/round, "
                f"{row.seconds:.2f} s/round" if row.result is not None and row.rounds else "")
        console.print(f"  {', '.join(filter(None, [done, row.note]))}  ({row.wall:.0f} s, load average {row.load:.2f})",
                      highlight=False)
    return paradigms_table(args, dataset, rows), any(row.failed for row in rows)


# --- federated LoRA -----------------------------------------------------------------------------------
LORA_ROWS = (("LoRA, A and B averaged", "fedavg"), ("FFA-LoRA, B averaged (exact)", "ffa"))


def lora_model(args: argparse.Namespace, console: Console) -> Path:
    """The base model: ``--model-path`` if it holds one, else pretrained there now (``--quick``: a
    tiny one for a few seconds in a temporary folder)."""
    from fl.lm.pretrain import pretrain

    path = Path(args.model_path)
    if (path / "config.json").exists():
        return path
    if args.quick:
        path = Path(tempfile.mkdtemp(prefix="paradigms-lm-")) / "tiny"
        pretrain(path, steps=60, vocab_size=512, layers=2, hidden=64, heads=2, block_size=args.block_size,
                 batch_size=16, device="cpu", log=lambda line: None)
        return path
    console.print(f"pretraining the base model into {path} ({args.pretrain_minutes:g} min) …")
    pretrain(path, seconds=60 * args.pretrain_minutes, log=lambda line: console.print(f"  {line}", highlight=False))
    return path


def lora_conf(args: argparse.Namespace, model_path: Path, variant: str) -> dict[str, Any]:
    return load_config(env={}, overrides={
        "dataset": "stdlib", "model": "lora", "model_path": str(model_path), "strategy": "fedavg",
        "lora_variant": variant, "lora_rank": args.lora_rank, "client.amount": args.lora_clients,
        "gobal_epoch": args.lora_rounds, "partition": "pathological", "classes_per_client": 2,
        "local_epoch": 1, "learn_rate": args.lora_lr, "BATCH_SIZE": 16, "block_size": args.block_size,
        "text_blocks": 40 if args.quick else 0, "workers": args.workers, "seed": args.seed, "device": "auto"})


def perplexity_before(conf: dict[str, Any]) -> float:
    """The clients' held-out perplexity with the initial adapters (B = 0: the base model itself)."""
    from fl.federation import JobSpec, client_data, job_data, make_worker

    job = JobSpec.from_config(conf)
    dataset, splits = job_data(job, conf["data_dir"], conf["model_path"])
    worker = make_worker(job, dataset.num_classes, torch.device("cpu"), conf["model_path"])
    evals = [worker.evaluate(i, client_data(dataset, split, torch.device("cpu")), worker.initial_shared(),
                             worker.initial_personal(i)) for i, split in enumerate(splits)]
    return math.exp(sum(e.loss_sum for e in evals) / sum(e.num_samples for e in evals))


def lora_section(args: argparse.Namespace, console: Console) -> tuple[Table, bool]:
    """Federated LoRA on the standard library's docstrings (each client two topic families): the
    perplexity before and after, the adapters' bytes on the wire against the full model's."""
    model_path = lora_model(args, console)
    full = sum(f.stat().st_size for f in model_path.glob("*.safetensors"))  # what FedAvg of the whole model sends
    table = Table(title=f"federated LoRA fine-tuning: {model_path.name} ({full / MB:.2f} MB of weights), "
                        f"{args.lora_clients} clients (2 stdlib families each), {args.lora_rounds} rounds, "
                        f"rank {args.lora_rank}, lr {args.lora_lr:g}, block {args.block_size}")
    for name in ("variant", "perplexity before", "after", "adapter MB/round", "full model MB/round",
                 "× full", "s/round"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    failed = False
    for label, variant in LORA_ROWS:
        console.print(f"[lora] {label} …")
        conf = lora_conf(args, model_path, variant)
        row = Row(Paradigm(variant, label, lambda a, b: {}))
        meter = WireMeter()

        def on_round(metrics: RoundMetrics, row: Row = row) -> None:
            row.rounds.append(metrics)
            up, down, *_ = meter.take()
            row.model_up.append(up)
            row.model_down.append(down)

        try:
            before = perplexity_before(conf)
            with meter.installed():
                run_simulation(conf, on_round=on_round)
        except Exception as exc:  # noqa: BLE001 - one broken row must not lose the other
            traceback.print_exc()
            table.add_row(label, f"failed: {type(exc).__name__}: {str(exc)[:80]}", *[""] * 5)
            failed = True
            continue
        whole = 2 * args.lora_clients * full
        table.add_row(label, f"{before:.2f}", f"{math.exp(row.rounds[-1].loss):.2f}", f"{row.total / MB:.3f}",
                      f"{whole / MB:.2f}", f"{row.total / whole:.4f}", f"{row.seconds:.2f}")
    return table, failed


# Each section runs its jobs and gives one table; a later section (another dataset, another
# family of models) is a function of the same shape appended here.
SECTIONS: dict[str, Callable[[argparse.Namespace, Console], tuple[Table, bool]]] = {
    "mnist": mnist_paradigms, "lora": lora_section}


def main() -> int:
    args = parse_args()
    console = Console()
    if not console.is_terminal:  # a log file: room for the whole table
        console = Console(width=200)
    started = time.perf_counter()
    failed = False
    for name in args.tables:
        table, section_failed = SECTIONS[name](args, console)
        console.print(table)
        failed |= section_failed
    console.print(f"{(time.perf_counter() - started) / 60:.1f} min on {machine()}, "
                  f"workers={args.workers or simulation.default_workers(args.clients)}", highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

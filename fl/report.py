"""What a run leaves behind for people: rich tables, a PNG curve, JSON metrics, model files."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from fl.plot import plot_accuracy  # noqa: F401 (part of this module's interface)
from fl.serialize import state_to_bytes, model_hash
from fl.simulation import RoundMetrics, SimulationResult


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def rounds_table(rounds: Sequence[RoundMetrics], title: str = "") -> Table:
    """One row per round: weighted/mean/min/max accuracy (%), losses and seconds."""
    table = Table(title=title or None)
    for name in ("round", "acc % (weighted)", "mean", "min", "max", "test loss", "train loss", "s"):
        table.add_column(name, justify="right")
    show_local = any(r.local_acc_weighted is not None for r in rounds)
    if show_local:
        table.add_column("local acc %", justify="right")
    for r in rounds:
        row = [str(r.round), _pct(r.acc_weighted), _pct(r.acc_mean), _pct(r.acc_min), _pct(r.acc_max),
               "–" if math.isnan(r.loss) else f"{r.loss:.4f}", f"{r.train_loss:.4f}", f"{r.seconds:.2f}"]
        if show_local:
            row.append(_pct(r.local_acc_weighted))
        table.add_row(*row)
    return table


def histogram_table(histogram: Sequence[Sequence[int]], num_train: Sequence[int], num_test: Sequence[int]) -> Table:
    """Per-client class counts of the training split, with train/test sizes."""
    table = Table(title="training samples per client and class")
    table.add_column("client", justify="right")
    for cls in range(len(histogram[0])):
        table.add_column(str(cls), justify="right")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for i, counts in enumerate(histogram):
        table.add_row(str(i), *(str(c) if c else "·" for c in counts), str(num_train[i]), str(num_test[i]))
    return table


def save_run(result: SimulationResult, conf: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write metrics.json, accuracy.png, the global shared layers and the clients' personal ones.

    The global model file holds what the strategy shares (the base for FedPer, everything for
    FedAvg) and is left out for Local, where nothing is shared.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    job = result.job
    paths = {
        "metrics": out_dir / "metrics.json",
        "plot": out_dir / "accuracy.png",
        "model": out_dir / "global_model.safetensors",
        "personal": out_dir / "personal_layers.safetensors",
    }
    model_bytes = state_to_bytes(result.global_state)
    personal = {f"client{i}.{k}": v for i, state in enumerate(result.personal_states) for k, v in state.items()}
    if result.global_state:
        paths["model"].write_bytes(model_bytes)
    else:
        del paths["model"]
    if personal:
        paths["personal"].write_bytes(state_to_bytes(personal))
    else:
        del paths["personal"]
    metrics = {
        "config": conf,
        "job": job.__dict__,
        "rounds": [r.as_dict() for r in result.rounds],
        "final_accuracy": result.final_accuracy,
        "best_accuracy": result.best_accuracy,  # the last round is always evaluated: never NaN
        "seconds_per_round": result.seconds_per_round,
        "global_model_sha256": model_hash(model_bytes) if result.global_state else None,
        "clients": {"train": result.num_train, "test": result.num_test, "class_histogram": result.histogram},
    }
    paths["metrics"].write_text(json.dumps(metrics, indent=2))
    plot_accuracy({job.strategy: result.rounds}, paths["plot"],
                  f"{job.strategy} on {job.dataset}, {job.num_clients} clients ({job.partition})",
                  {job.strategy: result.rounds[-1].client_acc})  # (the last round is always evaluated)
    return paths

"""Accuracy curves as PNG files: matplotlib only, so the console can draw them without torch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_accuracy(curves: Mapping[str, Sequence[Any]], path: Path, title: str) -> None:
    """Save the weighted test accuracy per round of one or more runs as a PNG (each round any object
    with ``round`` and ``acc_weighted``: the simulation's metrics or the console's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, rounds in curves.items():
        points = [(r.round, 100 * r.acc_weighted) for r in rounds if not math.isnan(r.acc_weighted)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%, sample-weighted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""Learning curves as PNG files: matplotlib only, so the console can draw them without torch.

One figure: accuracy per round (the sample-weighted mean as a line, the band from the worst to
the best edge node's accuracy around it), test and training loss per round, and where known each
edge node's final accuracy; several runs (jobs, strategies) share the panels, one colour each.
Rounds are whole numbers on the axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def accuracy_figure(curves: Mapping[str, Sequence[Any]], title: str,
                    final_by_node: Mapping[str, Sequence[float]] | None = None) -> Any:
    """The figure (matplotlib's): ``curves`` maps a run's label to its rounds, each any object with
    ``round``, ``acc_weighted``, ``acc_min``, ``acc_max``, ``loss`` and ``train_loss`` (the
    simulation's metrics or the console's; unevaluated rounds hold NaN); ``final_by_node`` maps a
    run's label to each edge node's final accuracy (0..1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 3 if final_by_node else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=120)
    accuracy, loss = axes[0], axes[1]
    for index, (label, rounds) in enumerate(curves.items()):
        colour = f"C{index}"
        evaluated = [r for r in rounds if not math.isnan(r.acc_weighted)]
        xs = [r.round for r in evaluated]
        accuracy.plot(xs, [100 * r.acc_weighted for r in evaluated], marker=".", color=colour, label=label)
        accuracy.fill_between(xs, [100 * r.acc_min for r in evaluated], [100 * r.acc_max for r in evaluated],
                              color=colour, alpha=0.2, linewidth=0)
        loss.plot(xs, [r.loss for r in evaluated], marker=".", color=colour, label=f"{label}: test")
        loss.plot([r.round for r in rounds], [r.train_loss for r in rounds], linestyle="--", color=colour,
                  label=f"{label}: training")
    accuracy.set_ylabel("test accuracy (%)")
    accuracy.set_title("weighted mean; band: worst to best edge node", fontsize="medium")
    loss.set_ylabel("loss")
    loss.set_title("test (evaluated rounds) and training loss", fontsize="medium")
    for ax in (accuracy, loss):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if final_by_node:
        bars = axes[2]
        width = 0.8 / len(final_by_node)
        for index, (label, accuracies) in enumerate(final_by_node.items()):
            bars.bar([node + index * width for node in range(len(accuracies))], [100 * a for a in accuracies],
                     width=width, color=f"C{index}", label=label)
        bars.set_xlabel("edge node")
        bars.set_ylabel("test accuracy (%)")
        bars.set_title("each edge node after the last round", fontsize="medium")
        bars.xaxis.set_major_locator(MaxNLocator(integer=True))
        bars.grid(alpha=0.3, axis="y")
        bars.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy(curves: Mapping[str, Sequence[Any]], path: Path, title: str,
                  final_by_node: Mapping[str, Sequence[float]] | None = None) -> None:
    """Save :func:`accuracy_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(curves, title, final_by_node)
    fig.savefig(path)
    plt.close(fig)

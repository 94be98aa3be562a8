"""Charts drawn on the server: the learning curves of ``fl.plot`` as SVG, so a page needs no
script and nothing from the internet. matplotlib's pyplot keeps global state, so one chart is
drawn at a time; a chart is kept until its job has another round or evaluation."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from typing import Any

from fl.plot import accuracy_figure

_DRAWING = threading.Lock()
_KEPT: dict[str, tuple[Any, bytes]] = {}
KEPT_CHARTS = 32


def curves_svg(job_id: str, rounds: Sequence[Any], final_accuracy: Sequence[float]) -> bytes:
    """The job's accuracy (weighted mean, min–max band) and loss per round, and each edge node's
    final accuracy, as an SVG document."""
    key = repr((list(rounds), list(final_accuracy)))  # repr: NaN equals itself there
    with _DRAWING:
        kept = _KEPT.get(job_id)
        if kept is not None and kept[0] == key:
            return kept[1]
        import matplotlib.pyplot as plt

        figure = accuracy_figure({job_id: rounds}, f"job {job_id}",
                                 {job_id: list(final_accuracy)} if final_accuracy else None)
        out = io.BytesIO()
        figure.savefig(out, format="svg")
        plt.close(figure)
        if len(_KEPT) >= KEPT_CHARTS:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[job_id] = (key, out.getvalue())
        return out.getvalue()

"""Charts drawn on the server: the learning curves of ``fl.plot`` as SVG, so a page needs no
script and nothing from the internet. matplotlib's pyplot keeps global state, so one chart is
drawn at a time; a chart is kept until its job has another round or evaluation."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fl.plot import accuracy_figure

_DRAWING = threading.Lock()
_KEPT: dict[str, tuple[Any, bytes]] = {}
KEPT_CHARTS = 32


def curves_svg(name: str, title: str, curves: Mapping[str, Sequence[Any]],
               final_accuracy: Mapping[str, Sequence[float]] | None = None) -> bytes:
    """Accuracy (weighted mean, min–max band) and loss per round of each run in ``curves`` (label
    → rounds), and each edge node's final accuracy where given, as an SVG document; kept under
    ``name`` until what it draws changes."""
    key = repr((title, dict(curves), dict(final_accuracy or {})))  # repr: NaN equals itself there
    with _DRAWING:
        kept = _KEPT.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        import matplotlib.pyplot as plt

        figure = accuracy_figure(curves, title, {k: list(v) for k, v in (final_accuracy or {}).items() if v} or None)
        out = io.BytesIO()
        figure.savefig(out, format="svg")
        plt.close(figure)
        if len(_KEPT) >= KEPT_CHARTS:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[name] = (key, out.getvalue())
        return out.getvalue()

"""An edge node that lies about its update, for tests of the checks on claims.

Run with main.py's arguments; ``FEDLEDGER_TEST_FAULT`` says how it lies in every round:
``samples`` claims 10⁹ training samples (its shard holds a few hundred), so that under a plain
mean its update alone would become the global model; ``scale`` sends its trained shared layers
multiplied by 50 (the poisoning a norm bound stops); ``freeride`` trains (its loss looks real) but
sends back the model it was sent (a free rider, for the contribution scores).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl import federation  # noqa: E402

FAULT = os.environ["FEDLEDGER_TEST_FAULT"]
_honest_round = federation.ClientWorker.train_round


def _lying_round(self, client, data, round_number, shared, *args, **kwargs):
    result = _honest_round(self, client, data, round_number, shared, *args, **kwargs)
    if FAULT == "freeride":
        result = dataclasses.replace(result, shared={k: v.clone() for k, v in shared.items()})
    if FAULT == "samples":
        result = dataclasses.replace(result, stats=dataclasses.replace(result.stats, num_samples=10**9))
    elif FAULT == "scale":
        result = dataclasses.replace(result, shared={k: v * 50 if v.is_floating_point() else v
                                                     for k, v in result.shared.items()})
    return result


federation.ClientWorker.train_round = _lying_round

if __name__ == "__main__":
    import main

    sys.exit(main.main(sys.argv[1:]))

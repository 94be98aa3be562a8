"""The legacy aggregation API (fl/strategy/legacy.py), kept importable from fl.strategy until the
network code uses the Strategy verbs; the rules themselves are tested in test_strategy_*.py."""

import pytest
import torch

from fl.strategy import (FedAvg, FedPer, InvalidUpdate, Local, RunningAverage, Update, get_strategy, validate_update,
                         weighted_average)

BASE = ["base.weight", "base.bias"]
HEAD = ["head.weight"]


def _state(value: float) -> dict[str, torch.Tensor]:
    return {
        "base.weight": torch.full((3, 2), value),
        "base.bias": torch.full((3,), value * 2),
        "head.weight": torch.full((2, 3), -value),
    }


def test_weighted_average_matches_hand_computation():
    torch.manual_seed(0)
    states = [{k: torch.randn(4, 5) for k in ("a", "b")} for _ in range(3)]
    counts = [10, 30, 60]
    out = weighted_average([Update(s, n) for s, n in zip(states, counts)], ["a", "b"])
    for key in ("a", "b"):
        expected = [[sum(states[i][key][r][c].item() * counts[i] for i in range(3)) / 100 for c in range(5)]
                    for r in range(4)]
        assert torch.allclose(out[key], torch.tensor(expected), atol=1e-6)


def test_fedper_averages_base_and_leaves_head():
    global_state = _state(0.0)
    updates = [Update(_state(1.0), 1), Update(_state(4.0), 3)]
    # FedPer clients send only the base layers
    updates = [Update({k: u.state[k] for k in BASE}, u.num_samples) for u in updates]
    new = FedPer().aggregate(global_state, updates, BASE, HEAD)
    assert torch.allclose(new["base.weight"], torch.full((3, 2), 3.25))
    assert torch.allclose(new["base.bias"], torch.full((3,), 6.5))
    assert torch.equal(new["head.weight"], global_state["head.weight"])


def test_fedavg_averages_everything_and_local_nothing():
    updates = [Update(_state(2.0), 1), Update(_state(6.0), 1)]
    new = FedAvg().aggregate(_state(0.0), updates, BASE, HEAD)
    assert torch.allclose(new["head.weight"], torch.full((2, 3), -4.0))
    assert torch.allclose(new["base.weight"], torch.full((3, 2), 4.0))
    same = Local().aggregate(_state(0.5), [Update({}, 5)], BASE, HEAD)
    assert all(torch.equal(same[k], _state(0.5)[k]) for k in same)


def test_aggregate_does_not_modify_inputs():
    global_state = _state(0.0)
    update = {k: v.clone() for k, v in _state(1.0).items()}
    FedAvg().aggregate(global_state, [Update(update, 2)], BASE, HEAD)
    assert torch.equal(global_state["base.weight"], torch.zeros(3, 2))
    assert torch.equal(update["base.weight"], torch.ones(3, 2))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("base.bias"), r"missing \['base.bias'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected \['extra'\]"),
        (lambda s: s.update({"base.weight": torch.zeros(2, 3)}), r"shape \(2, 3\), expected \(3, 2\)"),
        (lambda s: s.update({"base.weight": torch.zeros(3, 2, dtype=torch.float64)}), "dtype"),
        (lambda s: s["base.bias"].__setitem__(0, float("nan")), "NaN or infinite"),
        (lambda s: s["base.bias"].__setitem__(1, float("inf")), "NaN or infinite"),
    ],
)
def test_bad_updates_are_rejected(mutate, message):
    bad = {k: v.clone() for k, v in _state(1.0).items() if k in BASE}
    mutate(bad)
    good = Update({k: _state(1.0)[k] for k in BASE}, 1)
    with pytest.raises(InvalidUpdate, match="update 1: .*" + message):
        FedPer().aggregate(_state(0.0), [good, Update(bad, 1)], BASE, HEAD)


def test_bad_sample_counts_rejected():
    with pytest.raises(InvalidUpdate, match="sample counts"):
        weighted_average([Update(_state(1.0), 0)], BASE)
    with pytest.raises(ValueError, match="no updates"):
        weighted_average([], BASE)


def test_validate_update_names_the_key():
    with pytest.raises(InvalidUpdate, match="head.weight: expected a tensor"):
        validate_update({"head.weight": torch.zeros(1)}, {"head.weight": [0.0]})


def test_get_strategy():
    assert isinstance(get_strategy("FedPer"), FedPer)
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("scaffold")


def test_no_updates_for_shared_keys_is_an_error_and_numpy_counts_work():
    import numpy as np

    with pytest.raises(ValueError, match="no client returned an update"):
        FedPer().aggregate(_state(0.0), [], BASE, HEAD)
    new = FedPer().aggregate(_state(0.0), [Update({k: _state(2.0)[k] for k in BASE}, np.int64(3))], BASE, HEAD)
    assert torch.allclose(new["base.weight"], torch.full((3, 2), 2.0))
    with pytest.raises(InvalidUpdate, match="sample counts"):
        weighted_average([Update(_state(1.0), True)], BASE)


def test_running_average_accumulates_in_float64_one_update_at_a_time():
    # float32 sums would lose the small updates next to the big one; float64 keeps them
    big, small = torch.full((4,), 1e8), torch.full((4,), 1.0)
    average = RunningAverage(["w"])
    average.add(Update({"w": big}, 1))
    for _ in range(1000):
        average.add(Update({"w": small}, 1))
    average.add(Update({"w": -big}, 1))
    assert average.total == 1002
    assert torch.allclose(average.result({"w": torch.float32})["w"], torch.full((4,), 1000 / 1002))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finiteness_check_is_exact_at_the_dtype_limits(dtype):
    limit = torch.finfo(dtype).max
    reference = {"w": torch.zeros(10_000, dtype=dtype)}
    validate_update(reference, {"w": torch.full((10_000,), limit, dtype=dtype)})  # finite, however large
    validate_update(reference, {"w": torch.full((10_000,), -limit, dtype=dtype)})
    for bad in (float("nan"), float("inf"), -float("inf")):
        state = {"w": torch.zeros(10_000, dtype=dtype)}
        state["w"][1234] = bad
        with pytest.raises(InvalidUpdate, match="NaN or infinite"):
            validate_update(reference, state)
    both = {"w": torch.zeros(10_000, dtype=dtype)}
    both["w"][0], both["w"][1] = float("inf"), -float("inf")  # they do not cancel out
    with pytest.raises(InvalidUpdate, match="NaN or infinite"):
        validate_update(reference, both)


def test_a_running_average_result_is_its_own_tensor():
    average = RunningAverage(["w"])
    average.add(Update({"w": torch.ones(3, dtype=torch.float64)}, 1))
    first = average.result({"w": torch.float64})["w"]
    average.add(Update({"w": torch.full((3,), 9.0, dtype=torch.float64)}, 1))
    second = average.result({"w": torch.float64})["w"]
    assert torch.equal(first, torch.ones(3, dtype=torch.float64))  # untouched by what came later
    assert torch.equal(second, torch.full((3,), 5.0, dtype=torch.float64))


def test_a_running_average_can_refill_the_buffers_of_a_finished_one():
    first = RunningAverage(["w", "b"])
    first.add(Update({"w": torch.full((3, 2), 4.0), "b": torch.ones(2)}, 1))
    first.result()
    buffers = first.buffers()
    second = RunningAverage(["w", "b"], reuse=buffers)
    second.add(Update({"w": torch.ones(3, 2), "b": torch.zeros(2)}, 1))
    second.add(Update({"w": torch.full((3, 2), 3.0), "b": torch.full((2,), 2.0)}, 3))
    result = second.result()
    assert torch.equal(result["w"], torch.full((3, 2), 2.5)) and torch.equal(result["b"], torch.full((2,), 1.5))
    assert all(second.buffers()[k][0].data_ptr() == buffers[k][0].data_ptr() for k in ("w", "b"))  # refilled
    other_shape = RunningAverage(["w"], reuse=buffers)
    other_shape.add(Update({"w": torch.ones(5)}, 1))  # buffers of another shape are not used
    assert torch.equal(other_shape.result()["w"], torch.ones(5))


def test_legacy_names_share_the_new_update_and_error_classes():
    import fl.strategy as package
    from fl.strategy import base, legacy

    assert package.Update is base.Update is legacy.Update
    assert package.InvalidUpdate is base.InvalidUpdate is legacy.InvalidUpdate
    assert base.InvalidUpdate.__module__ == "fl.strategy.base"  # node/net/errors.py maps it by this name
    assert Update({"w": torch.zeros(1)}, 1).model_hash == ""
    assert set(package.STRATEGIES) == {"fedper", "fedavg", "local"}
    assert not isinstance(get_strategy("fedavg"), package.Strategy)  # the old classes, unchanged

"""What every update passes before any rule combines it (``fl.strategy.base.check_update``)."""

import pytest
import torch

from fl.strategy import MAX_ABS, InvalidUpdate, Update, check_update


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_values_must_be_finite_and_within_the_bound_at_every_dtype(dtype):
    reference = {"w": torch.zeros(10_000, dtype=dtype)}
    largest = min(float(MAX_ABS), torch.finfo(dtype).max)  # float16 cannot even reach the bound
    edge = torch.full((10_000,), largest, dtype=dtype)
    check_update(reference, Update({"w": edge}, 1))  # the bound itself is allowed
    check_update(reference, Update({"w": -edge}, 1))
    bad_values = [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (-float("inf"), "NaN or infinite")]
    if torch.finfo(dtype).max > 4.0 * MAX_ABS:
        bad_values.append((4.0 * MAX_ABS, "exceed the bound"))
    for bad, message in bad_values:
        state = {"w": torch.zeros(10_000, dtype=dtype)}
        state["w"][1234] = bad
        with pytest.raises(InvalidUpdate, match=message):
            check_update(reference, Update(state, 1))


@pytest.mark.parametrize("count", [0, -1, 2**31, True, 1.5, "3"])
def test_sample_counts_must_be_plausible_integers(count):
    reference = {"w": torch.zeros(3)}
    with pytest.raises(InvalidUpdate, match="sample counts"):
        check_update(reference, Update({"w": torch.zeros(3)}, count))


@pytest.mark.parametrize("state, message", [
    ({"w": torch.zeros(3), "x": torch.zeros(1)}, "unexpected"),
    ({}, "missing"),
    ({"w": torch.zeros(4)}, "shape"),
    ({"w": torch.zeros(3, dtype=torch.float64)}, "dtype"),
    ({"w": [0.0, 0.0, 0.0]}, "expected a tensor"),
])
def test_the_layout_must_be_the_models_and_the_key_is_named(state, message):
    with pytest.raises(InvalidUpdate, match=message):
        check_update({"w": torch.zeros(3)}, Update(state, 1))

"""ExactSum: exactly associative and commutative, bounded, and a partial survives the wire."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.serialize import state_from_bytes, state_to_bytes
from fl.strategy import MAX_TOTAL, ExactSum, InvalidUpdate, Mean, Update
from fl.strategy.exact import BLOCK

REFERENCE = {"a": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.float64), "n": torch.zeros((), dtype=torch.int64)}
DTYPES = {k: v.dtype for k, v in REFERENCE.items()}

_value32 = st.floats(min_value=-(2.0**20), max_value=2.0**20, allow_nan=False, width=32)
_value64 = st.floats(min_value=-(2.0**20), max_value=2.0**20, allow_nan=False)
_update = st.builds(
    lambda a, b, n, count: Update({"a": torch.tensor(a, dtype=torch.float32).view(3, 2),
                                   "b": torch.tensor(b, dtype=torch.float64),
                                   "n": torch.tensor(n, dtype=torch.int64)}, count),
    st.lists(_value32, min_size=6, max_size=6), st.lists(_value64, min_size=4, max_size=4),
    st.integers(0, 10**6), st.one_of(st.integers(1, 1000), st.integers(1, 2**31 - 1)))


def _bytes(state):
    return {k: v.numpy().tobytes() for k, v in state.items()}


def _flat(updates):
    total = ExactSum(REFERENCE)
    for u in updates:
        total.add(u)
    return total


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(_update, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_grouping_and_order_gives_the_same_bytes(updates, rnd):
    flat = _flat(updates)
    shuffled = updates[:]
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.sample(range(1, len(shuffled)), rnd.randint(0, len(shuffled) - 1))) if len(shuffled) > 1 else []
    groups = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(shuffled)])]
    partials = []
    for group in groups:
        partial = ExactSum()  # the layout from the first update
        for u in group:
            partial.add(u)
        partials.append(partial)
    rnd.shuffle(partials)
    merged = ExactSum()
    for partial in partials:
        merged.merge(partial)
    assert merged.total == flat.total == sum(u.num_samples for u in updates)
    assert _bytes(merged.to_state()) == _bytes(flat.to_state())
    assert _bytes(merged.mean(DTYPES)) == _bytes(flat.mean(DTYPES))
    # and the strategy's own aggregate is the same as finalize over the merged partials
    strategy = Mean("fedavg")
    assert _bytes(strategy.aggregate(REFERENCE, updates)) == _bytes(strategy.finalize(REFERENCE, merged))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(_update, min_size=1, max_size=6))
def test_the_limbs_are_the_exact_integer_sum_on_the_grid(updates):
    total = _flat(updates)
    state = total.to_state()
    for key in ("a", "b"):
        hi, lo = state[f"{key}/hi"].reshape(-1).tolist(), state[f"{key}/lo"].reshape(-1).tolist()
        for i in range(len(hi)):
            # Python's round() is half-to-even, as torch.round; v * 2**32 is exact in a double
            exact = sum(u.num_samples * round(u.state[key].reshape(-1)[i].item() * 2**32) for u in updates)
            assert hi[i] * 2**24 + lo[i] == exact
    assert state["n/max"].item() == max(u.state["n"].item() for u in updates)
    mean = total.mean()  # float64 without dtypes: close to the exact rational mean
    for key in ("a", "b"):
        for i, value in enumerate(mean[key].reshape(-1).tolist()):
            exact = sum(u.num_samples * round(u.state[key].reshape(-1)[i].item() * 2**32) for u in updates)
            assert abs(value - exact / (total.total * 2**32)) <= 1e-15 * max(1.0, abs(value))


def test_mean_is_a_plain_weighted_mean_to_float32_precision():
    torch.manual_seed(0)
    updates = [Update({"a": torch.randn(3, 2), "b": torch.randn(4, dtype=torch.float64),
                       "n": torch.tensor(i)}, 10 * i + 1) for i in range(5)]
    mean = _flat(updates).mean(DTYPES)
    for key in ("a", "b"):
        expected = sum(u.state[key].double() * u.num_samples for u in updates) / sum(u.num_samples for u in updates)
        assert torch.allclose(mean[key].double(), expected, atol=1e-6, rtol=0)
    assert mean["a"].dtype == torch.float32 and mean["b"].dtype == torch.float64 and mean["n"].item() == 4


def test_keys_larger_than_a_block_are_summed_whole():
    value = torch.arange(BLOCK + 5, dtype=torch.float32) / 7
    total = ExactSum({"w": torch.zeros(BLOCK + 5)})
    total.add(Update({"w": value}, 3))
    total.add(Update({"w": -value}, 1))
    assert torch.allclose(total.mean({"w": torch.float32})["w"], value / 2, atol=1e-9, rtol=0)


def test_half_precision_values_are_widened_before_scaling():
    ref = {"h": torch.zeros(3, dtype=torch.float16), "g": torch.zeros(2, dtype=torch.bfloat16)}
    total = ExactSum(ref)
    total.add(Update({"h": torch.tensor([1.5, -2.0, 60000.0], dtype=torch.float16),
                      "g": torch.tensor([3.0, -0.5], dtype=torch.bfloat16)}, 2))
    mean = total.mean({k: v.dtype for k, v in ref.items()})
    assert mean["h"].tolist() == [1.5, -2.0, 60000.0] and mean["g"].tolist() == [3.0, -0.5]


# --- bounds --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    (2.0**20 * 1.0001, "exceed the bound"), (-(2.0**20) - 1, "exceed the bound"),
    (float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (-float("inf"), "NaN or infinite")])
def test_values_out_of_bounds_are_refused_naming_the_key(value, message):
    total = ExactSum(REFERENCE)
    state = {k: v.clone() for k, v in REFERENCE.items()}
    state["b"][2] = value
    with pytest.raises(InvalidUpdate, match=f"b: .*{message}"):
        total.add(Update(state, 1))
    assert total.total == 0  # nothing was added


@pytest.mark.parametrize("count", [0, -3, 2**31, True, 2.0])
def test_impossible_sample_counts_are_refused(count):
    with pytest.raises(InvalidUpdate, match="sample counts"):
        ExactSum(REFERENCE).add(Update(dict(REFERENCE), count))


def test_the_total_stays_below_2_to_the_35():
    total = ExactSum(REFERENCE)
    biggest = Update({k: v + 2.0**20 if v.is_floating_point() else v for k, v in REFERENCE.items()}, 2**31 - 1)
    for _ in range(16):  # 16 · (2**31 − 1) < 2**35
        total.add(biggest)
    with pytest.raises(InvalidUpdate, match="at most"):
        total.add(biggest)
    assert total.total == 16 * (2**31 - 1)
    # the extreme sum is still exact and its mean the value itself
    assert torch.equal(total.mean(DTYPES)["a"], torch.full((3, 2), 2.0**20))
    with pytest.raises(InvalidUpdate, match="at most"):
        total.merge(total)


def test_wrong_layouts_are_refused():
    total = ExactSum(REFERENCE)
    with pytest.raises(InvalidUpdate, match="missing \\['n'\\]"):
        total.add(Update({"a": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.float64)}, 1))
    with pytest.raises(InvalidUpdate, match="a: shape"):
        total.add(Update({**REFERENCE, "a": torch.zeros(2, 3)}, 1))
    with pytest.raises(InvalidUpdate, match="b: dtype"):
        total.add(Update({**REFERENCE, "b": torch.zeros(4)}, 1))
    other = ExactSum({"x": torch.zeros(1)})
    other.add(Update({"x": torch.ones(1)}, 1))
    with pytest.raises(InvalidUpdate, match="different layouts"):
        total.merge(other)
    with pytest.raises(ValueError, match="no updates"):
        total.mean(DTYPES)


# --- the wire ----------------------------------------------------------------------------------------
def _partial(seed, n=3):
    rnd = random.Random(seed)
    updates = [Update({"a": torch.tensor([rnd.uniform(-9, 9) for _ in range(6)]).view(3, 2),
                       "b": torch.tensor([rnd.uniform(-9, 9) for _ in range(4)], dtype=torch.float64),
                       "n": torch.tensor(rnd.randint(0, 99))}, rnd.randint(1, 500)) for _ in range(n)]
    return updates, _flat(updates)


def test_to_state_and_from_state_round_trip_through_safetensors_bytes():
    updates, partial = _partial(1)
    state = partial.to_state()
    assert sorted(state) == ["a/hi", "a/lo", "b/hi", "b/lo", "n/max"]
    data = state_to_bytes(state)
    received = ExactSum.from_state(state_from_bytes(data), partial.total, REFERENCE)
    assert _bytes(received.to_state()) == _bytes(state)
    assert _bytes(received.mean(DTYPES)) == _bytes(partial.mean(DTYPES))
    more, other = _partial(2)
    received.merge(other)  # a received partial can be merged into (its tensors were copied)
    assert _bytes(received.mean(DTYPES)) == _bytes(_flat(updates + more).mean(DTYPES))
    assert state_to_bytes(partial.to_state()) == data  # the sender's sum is untouched


def _tampered(edit):
    _, partial = _partial(3)
    state = {k: v.clone() for k, v in partial.to_state().items()}
    total = edit(state, partial.total)
    return state, total if total is not None else partial.total


@pytest.mark.parametrize("edit, message", [
    (lambda s, t: s["a/hi"].__setitem__((0, 0), t * 2**28 + 1), r"a/hi: limbs .* exceed what"),
    (lambda s, t: s["b/hi"].__setitem__(0, -(t * 2**28) - 1), r"b/hi: limbs .* exceed what"),
    (lambda s, t: s["a/lo"].__setitem__((1, 1), -1), r"a/lo: limbs .* exceed what"),
    (lambda s, t: s["b/lo"].__setitem__(3, t * (2**24 - 1) + 1), r"b/lo: limbs .* exceed what"),
    (lambda s, t: s.update({"a/hi": 2**62 + torch.zeros(3, 2, dtype=torch.int64)}), "exceed what"),
    (lambda s, t: s.pop("n/max") and None, r"missing \['n/max'\]"),
    (lambda s, t: s.update({"c/hi": torch.zeros(1, dtype=torch.int64)}), r"unexpected \['c/hi'\]"),
    (lambda s, t: s.update({"a/lo": torch.zeros(6, dtype=torch.int64)}), "a/lo: shape"),
    (lambda s, t: s.update({"a/lo": torch.zeros(3, 2, dtype=torch.int32)}), "a/lo: dtype"),
    (lambda s, t: 0, "total must be an integer in"),
    (lambda s, t: MAX_TOTAL, "total must be an integer in"),
    (lambda s, t: 2.5, "total must be an integer in"),
])
def test_from_state_refuses_partials_that_could_overflow_or_do_not_fit(edit, message):
    state, total = _tampered(edit)
    with pytest.raises(InvalidUpdate, match=message):
        ExactSum.from_state(state, total, REFERENCE)


def test_partials_at_their_bounds_merge_without_overflow():
    limit = MAX_TOTAL // 2 - 1
    ref = {"w": torch.zeros(2)}
    high = ExactSum.from_state({"w/hi": torch.tensor([limit * 2**28, -limit * 2**28]),
                                "w/lo": torch.tensor([limit * (2**24 - 1), 0])}, limit, ref)
    low = ExactSum.from_state({"w/hi": torch.tensor([limit * 2**28, -limit * 2**28]),
                               "w/lo": torch.tensor([limit * (2**24 - 1), 0])}, limit, ref)
    high.merge(low)
    assert high.total == 2 * limit < MAX_TOTAL
    hi = high.to_state()["w/hi"].tolist()
    assert hi == [2 * limit * 2**28, -2 * limit * 2**28]  # no wrap-around
    mean = high.mean({"w": torch.float64})["w"].tolist()
    assert mean[0] == pytest.approx((2**52 + 2**24 - 1) / 2**32, rel=1e-15) and mean[1] == -(2.0**20)


def test_a_finished_sum_s_buffers_are_reused():
    updates, first = _partial(4)
    first.mean(DTYPES)
    pointer = first.to_state()["a/hi"].data_ptr()
    second = ExactSum(REFERENCE, reuse=first)
    for u in updates:
        second.add(u)
    assert second.to_state()["a/hi"].data_ptr() == pointer
    assert _bytes(second.mean(DTYPES)) == _bytes(_flat(updates).mean(DTYPES))
    assert first.total == 0 and first.keys == []  # the old one gave its buffers away

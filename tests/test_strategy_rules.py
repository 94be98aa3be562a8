"""Every aggregation rule against a hand computation, the registry, options and fits, robustness."""

import hashlib
import math
import random
import statistics

import pytest
import torch

from fl.strategy import (AGGREGATIONS, ExactSum, FedAdam, FedAvgM, InvalidUpdate, Krum, Mean, Median, Strategy,
                         TrimmedMean, Update, build_strategy, check_fits, check_given_options, options_of)
from fl.strategy.krum import pairwise_squared_distances

TOL = 1e-6


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _updates(rows: list[list[float]], counts: list[int] | None = None, hashes: list[str] | None = None):
    """One update per row, a single tensor "w" of the row's values."""
    counts = counts or [1] * len(rows)
    hashes = hashes or [_hash(i) for i in range(len(rows))]
    return [Update({"w": torch.tensor(r, dtype=torch.float32)}, c, h) for r, c, h in zip(rows, counts, hashes)]


def _close(tensor: torch.Tensor, expected: list[float], tol: float = TOL) -> bool:
    return len(expected) == tensor.numel() and all(
        abs(a - b) <= tol for a, b in zip(tensor.reshape(-1).tolist(), expected))


def _global(values: list[float]) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


# --- mean ---------------------------------------------------------------------------------------------
def test_mean_is_the_sample_weighted_mean():
    rnd = random.Random(1)
    rows = [[rnd.uniform(-3, 3) for _ in range(7)] for _ in range(4)]
    counts = [10, 30, 45, 15]
    out = Mean("fedavg").aggregate(_global([0.0] * 7), _updates(rows, counts))["w"]
    rows32 = [torch.tensor(r).tolist() for r in rows]  # the float32 values the updates hold
    expected = [sum(rows32[i][c] * counts[i] for i in range(4)) / sum(counts) for c in range(7)]
    assert out.dtype == torch.float32 and _close(out, expected)


def test_mean_keeps_key_order_dtypes_and_takes_the_max_of_integer_tensors():
    reference = {"w": torch.zeros(2, dtype=torch.float64), "n": torch.zeros((), dtype=torch.int64),
                 "h": torch.zeros(3, dtype=torch.float16)}
    ups = [Update({"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "n": torch.tensor(7),
                   "h": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)}, 1, _hash(0)),
           Update({"w": torch.tensor([3.0, 4.0], dtype=torch.float64), "n": torch.tensor(9),
                   "h": torch.tensor([3.0, 4.0, 5.0], dtype=torch.float16)}, 3, _hash(1))]
    out = Mean().aggregate(reference, ups)
    assert list(out) == ["w", "n", "h"]
    assert out["w"].dtype == torch.float64 and out["w"].tolist() == [2.5, 3.5]
    assert out["n"].item() == 9 and out["n"].dtype == torch.int64
    assert out["h"].dtype == torch.float16 and out["h"].tolist() == [2.5, 3.5, 4.5]


# --- server optimisers ------------------------------------------------------------------------------
def _mean_of(rows, counts):
    return [sum(r[c] * n for r, n in zip(rows, counts)) / sum(counts) for c in range(len(rows[0]))]


def test_fedavgm_over_three_rounds_matches_the_hand_computation():
    lr, beta = 0.7, 0.5
    strategy = FedAvgM("fedavg", server_lr=lr, server_momentum=beta)
    x = [0.5, -1.0]
    velocity = [0.0, 0.0]
    current = _global(x)
    for r, rows in enumerate([[[1.0, 0.0], [2.0, -2.0]], [[0.25, 1.5], [-0.5, 0.5]], [[3.0, 3.0], [1.0, 1.0]]]):
        counts = [1, 3]
        mean = _mean_of(rows, counts)
        delta = [a - b for a, b in zip(x, mean)]
        velocity = [beta * v + d for v, d in zip(velocity, delta)]
        x = [a - lr * v for a, v in zip(x, velocity)]
        current = strategy.aggregate(current, _updates(rows, counts))
        assert _close(current["w"], x), (r, current["w"].tolist(), x)
    assert strategy.rounds == 3


def test_fedavgm_with_unit_lr_and_no_momentum_is_the_mean():
    rows, counts = [[1.0, 2.0], [3.0, 5.0]], [2, 1]
    out = FedAvgM("fedavg", server_lr=1.0, server_momentum=0.0).aggregate(_global([9.0, 9.0]), _updates(rows, counts))
    assert _close(out["w"], _mean_of(rows, counts))


def test_fedadam_over_two_rounds_matches_the_hand_computation():
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam("fedavg", adam_lr=eta, adam_beta1=b1, adam_beta2=b2, adam_tau=tau)
    x = [0.0, 1.0, -2.0]
    m = [0.0] * 3
    v = [tau * tau] * 3  # Reddi et al.: v_{-1} >= tau^2
    current = _global(x)
    for rows in ([[1.0, 1.0, -1.0], [3.0, 0.0, -3.0]], [[-1.0, 2.0, 0.5], [0.0, 2.0, 0.25]]):
        counts = [1, 1]
        delta = [a - b for a, b in zip(_mean_of(rows, counts), x)]
        m = [b1 * mi + (1 - b1) * d for mi, d in zip(m, delta)]
        v = [b2 * vi + (1 - b2) * d * d for vi, d in zip(v, delta)]
        x = [xi + eta * mi / (math.sqrt(vi) + tau) for xi, mi, vi in zip(x, m, v)]
        current = strategy.aggregate(current, _updates(rows, counts))
        assert _close(current["w"], x), (current["w"].tolist(), x)


def test_server_optimisers_replay_exactly_on_a_fresh_instance():
    """An auditor replays finalize round by round on a new instance and gets the same bytes."""
    torch.manual_seed(0)
    rounds = [[Update({"w": torch.randn(50)}, n, _hash(10 * r + i)) for i, n in enumerate((5, 9, 2))]
              for r in range(3)]
    for make in (lambda: FedAvgM("fedavg"), lambda: FedAdam("fedavg")):
        first, second = make(), make()
        a = b = {"w": torch.zeros(50)}
        for updates in rounds:
            a = first.aggregate(a, updates)
            total = second.accumulator(b)
            for update in reversed(updates):
                total.add(update)
            b = second.finalize(b, total)
            assert a["w"].numpy().tobytes() == b["w"].numpy().tobytes()


# --- median and trimmed mean -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 4])
def test_median_odd_and_even_counts(n):
    rnd = random.Random(n)
    rows = [[rnd.uniform(-5, 5) for _ in range(6)] for _ in range(n)]
    rows32 = [torch.tensor(r).tolist() for r in rows]
    expected = [statistics.median(r[c] for r in rows32) for c in range(6)]
    out = Median("fedavg").aggregate(_global([0.0] * 6), _updates(rows, [1, 100, 3, 7, 2][:n]))  # unweighted
    assert _close(out["w"], expected)


def test_median_even_count_is_the_mean_of_the_two_middle_values():
    out = Median("fedavg").aggregate(_global([0.0]), _updates([[1.0], [10.0], [2.0], [4.0]]))
    assert out["w"].tolist() == [3.0]


def test_trimmed_mean_cuts_int_beta_n_at_each_end():
    rows = [[1.0, -5.0], [2.0, 100.0], [3.0, 0.0], [400.0, 1.0], [-50.0, 2.0]]
    # beta 0.2, n 5: cut 1 at each end of every coordinate, unweighted mean of the 3 left
    out = TrimmedMean("fedavg", trim_beta=0.2).aggregate(_global([0.0, 0.0]), _updates(rows, [1, 2, 3, 4, 5]))
    assert _close(out["w"], [(1 + 2 + 3) / 3, (0 + 1 + 2) / 3])
    # beta 0.4 with 5: cut 2, the median; beta 0: the unweighted mean
    out = TrimmedMean("fedavg", trim_beta=0.4).aggregate(_global([0.0, 0.0]), _updates(rows))
    assert _close(out["w"], [2.0, 1.0])
    out = TrimmedMean("fedavg", trim_beta=0.0).aggregate(_global([0.0, 0.0]), _updates(rows))
    assert _close(out["w"], [sum(r[0] for r in rows) / 5, sum(r[1] for r in rows) / 5], tol=1e-5)


def test_trimmed_mean_matches_a_brute_force_on_random_data():
    rnd = random.Random(7)
    n, beta = 11, 0.25
    rows = [[rnd.gauss(0, 1) for _ in range(9)] for _ in range(n)]
    rows32 = [torch.tensor(r).tolist() for r in rows]
    cut = int(beta * n)
    expected = [statistics.fmean(sorted(r[c] for r in rows32)[cut:n - cut]) for c in range(9)]
    out = TrimmedMean("fedavg", trim_beta=beta).aggregate(_global([0.0] * 9), _updates(rows))
    assert _close(out["w"], expected)


def test_median_and_trimmed_mean_work_in_column_blocks(monkeypatch):
    """Blocks of a few columns (forced small here) give the same bytes as one block."""
    import fl.strategy.columns as columns

    torch.manual_seed(3)
    ups = [Update({"w": torch.randn(5, 7), "b": torch.randn(3)}, 1, _hash(i)) for i in range(6)]
    ref = {"w": torch.zeros(5, 7), "b": torch.zeros(3)}
    whole = [s.aggregate(ref, ups) for s in (Median("fedavg"), TrimmedMean("fedavg"))]
    monkeypatch.setattr(columns, "CHUNK_ELEMENTS", 6 * 4)  # 4 columns per block
    blocked = [s.aggregate(ref, ups) for s in (Median("fedavg"), TrimmedMean("fedavg"))]
    for a, b in zip(whole, blocked):
        assert all(torch.equal(a[k], b[k]) for k in ref)


# --- Krum --------------------------------------------------------------------------------------------
def _brute_krum(rows, f, m):
    n = len(rows)
    d = [[sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for j in range(n)] for i in range(n)]
    k = max(1, n - f - 2)
    scores = [sum(sorted(d[i][j] for j in range(n) if j != i)[:k]) for i in range(n)]
    return scores, sorted(range(n), key=lambda i: (scores[i], _hash(i)))[:m]


def test_krum_picks_the_obvious_one_and_multi_krum_averages_the_selected():
    rows = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.05, 0.05], [0.02, 0.01], [50.0, -50.0], [60.0, 60.0]]
    counts = [1, 2, 3, 4, 5, 6, 7]
    ups = _updates(rows, counts)
    ref = _global([0.0, 0.0])
    _, chosen = _brute_krum([torch.tensor(r).tolist() for r in rows], f=2, m=1)
    out = Krum("fedavg", krum_f=2).aggregate(ref, ups)
    assert torch.equal(out["w"], ups[chosen[0]].state["w"])  # Krum returns the update itself
    assert chosen[0] in (3, 4)  # the centre of the cluster
    out = Krum("fedavg", krum_f=2, krum_m=5).aggregate(ref, ups)  # the 5 honest ones
    expected = _mean_of([torch.tensor(r).tolist() for r in rows[:5]], counts[:5])
    assert _close(out["w"], expected)


def test_krum_on_a_non_obvious_case_matches_a_brute_force():
    rnd = random.Random(11)
    rows = [[rnd.gauss(0, 1) for _ in range(5)] for _ in range(9)]
    rows32 = [torch.tensor(r).tolist() for r in rows]
    ups = _updates(rows, [rnd.randint(1, 50) for _ in rows])
    strategy = Krum("fedavg", krum_f=2, krum_m=3)
    expected_scores, expected = _brute_krum(rows32, f=2, m=3)
    scores = strategy.scores(ups, ["w"])
    assert all(abs(a - b) <= 1e-9 * max(1.0, b) for a, b in zip(scores, expected_scores))
    assert strategy.select(ups, ["w"]) == sorted(expected)
    out = strategy.aggregate(_global([0.0] * 5), ups)
    sel = sorted(expected)
    assert _close(out["w"], _mean_of([rows32[i] for i in sel], [ups[i].num_samples for i in sel]))


def test_krum_ties_are_broken_by_model_hash_whatever_the_input_order():
    # n 5, f 1: each of the four points at -1 and +1 scores 0 + 1 (its twin and the centre);
    # the centre scores 1 + 1. Which of the four wins is the hash's choice alone.
    values = [-1.0, 1.0, -1.0, 1.0, 0.0]
    for winner in (0, 1):
        hashes = ["b" * 64, "c" * 64, "d" * 64, "e" * 64, "f" * 64]
        hashes[winner] = "a" * 64
        ups = [Update({"w": torch.tensor([v])}, i + 1, h) for i, (v, h) in enumerate(zip(values, hashes))]
        strategy = Krum("fedavg", krum_f=1)
        assert strategy.aggregate(_global([0.0]), ups)["w"].tolist() == [values[winner]]
        assert strategy.aggregate(_global([0.0]), list(reversed(ups)))["w"].tolist() == [values[winner]]
        assert strategy.scores(strategy.update_list(ups), ["w"]).count(1.0) == 4


def test_krum_distances_are_exact_sums_of_squares_over_all_keys_and_blocks(monkeypatch):
    torch.manual_seed(5)
    ups = [Update({"a": torch.randn(33), "b": torch.randn(4, 4)}, 1, _hash(i)) for i in range(4)]
    full = pairwise_squared_distances(ups, ["a", "b"])
    for i in range(4):
        for j in range(4):
            exact = sum(((ups[i].state[k].double() - ups[j].state[k].double()) ** 2).sum().item() for k in "ab")
            assert abs(full[i][j] - exact) <= 1e-12 * max(1.0, exact)
    monkeypatch.setattr("fl.strategy.krum.CHUNK_ELEMENTS", 64)  # tiny blocks: same values, close
    blocked = pairwise_squared_distances(ups, ["a", "b"])
    assert all(abs(full[i][j] - blocked[i][j]) <= 1e-12 * max(1.0, full[i][j]) for i in range(4) for j in range(4))


# --- robustness ------------------------------------------------------------------------------------
def test_median_and_krum_resist_one_update_scaled_a_thousandfold():
    torch.manual_seed(0)
    global_state = {"w": torch.randn(200) * 0.1}
    honest = [global_state["w"] + 0.01 * torch.randn(200) for _ in range(4)]
    attacker = (global_state["w"] + 0.01 * torch.randn(200)) * 1e3
    ups = [Update({"w": w}, 100, _hash(i)) for i, w in enumerate([*honest, attacker])]
    moved = {}
    for strategy in (Mean("fedavg"), Median("fedavg"), Krum("fedavg", krum_f=1), TrimmedMean("fedavg")):
        new = strategy.aggregate(global_state, ups)["w"]
        moved[strategy.name] = float((new - global_state["w"]).norm())
    honest_spread = max(float((w - global_state["w"]).norm()) for w in honest)
    assert moved["mean"] > 100 * honest_spread  # the mean follows the attacker
    for name in ("median", "krum", "trimmed_mean"):
        assert moved[name] <= honest_spread, (name, moved)  # as close as an honest update
        assert moved[name] * 100 < moved["mean"]


# --- the registry, options and fits ----------------------------------------------------------------
def test_registry_and_decomposability():
    assert set(AGGREGATIONS) == {"mean", "fedavgm", "fedadam", "median", "trimmed_mean", "krum"}
    for name, cls in AGGREGATIONS.items():
        strategy = build_strategy("fedper", name)
        assert isinstance(strategy, cls) and isinstance(strategy, Strategy) and strategy.name == name
        if cls.decomposable:
            assert isinstance(strategy.accumulator(), ExactSum)
        else:
            with pytest.raises(TypeError, match="does not decompose"):
                strategy.accumulator()
    assert {n for n, c in AGGREGATIONS.items() if c.decomposable} == {"mean", "fedavgm", "fedadam"}
    with pytest.raises(ValueError, match="unknown aggregation 'bulyan'"):
        build_strategy("fedper", "bulyan")
    with pytest.raises(ValueError, match="unknown sharing 'all'"):
        build_strategy("all", "mean")


def test_options_of_and_options_that_do_not_apply():
    assert options_of("krum") == {"krum_f", "krum_m"}
    assert options_of("mean") == set()
    assert options_of("fedadam") == {"adam_lr", "adam_beta1", "adam_beta2", "adam_tau"}
    check_given_options("median", {"proximal_mu"})  # the client hook goes with every rule
    with pytest.raises(ValueError, match=r"krum_f applies to aggregation='krum', not 'median'"):
        check_given_options("median", {"krum_f"})
    with pytest.raises(ValueError, match=r"krum_f applies to aggregation='krum', not 'median'"):
        Median("fedavg", krum_f=2)
    with pytest.raises(ValueError, match=r"unknown option 'warp'"):
        build_strategy("fedavg", "mean", warp=9)
    with pytest.raises(ValueError, match=r"trim_beta: 0.5 is out of range, expected in \[0, 0.5\)"):
        TrimmedMean("fedavg", trim_beta=0.5)
    with pytest.raises(ValueError, match="krum_f: expected an integer"):
        Krum("fedavg", krum_f=1.5)
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvgM("fedavg", server_momentum=1.0)


@pytest.mark.parametrize("strategy, n, message", [
    (Krum("fedavg", krum_f=2), 6, r"krum with krum_f=2 needs at least 2\*krum_f\+3 = 7 clients, the job has 6"),
    (Krum("fedavg", krum_f=1, krum_m=5), 5, r"krum_m=5 selects more updates than the n-krum_f = 4"),
    (TrimmedMean("fedavg", trim_beta=0.2), 4, r"cuts int\(0.2\*4\) = 0 updates per end"),
])
def test_rules_that_do_not_fit_the_job(strategy, n, message):
    with pytest.raises(ValueError, match=message):
        check_fits(strategy, n)
    check_fits(strategy, 2 * n + 3)  # enough clients


def test_configure_train_gives_canonical_strings():
    assert Mean("fedper").configure_train(1) == {}
    assert Median("fedper", proximal_mu=0.01).configure_train(3) == {"proximal_mu": "0.01"}
    assert Mean("fedper", proximal_mu=1e-5).configure_train(1) == {"proximal_mu": repr(1e-5)}


def test_shared_keys_by_sharing():
    assert Mean("fedper").shared_keys(["a", "b"], ["h"]) == ["a", "b"]
    assert Krum("fedavg").shared_keys(["a", "b"], ["h"]) == ["a", "b", "h"]
    assert Median("local").shared_keys(["a", "b"], ["h"]) == []


# --- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mean", "median", "krum"])
@pytest.mark.parametrize("value, message", [
    (float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (2.0**20 + 1, "exceed the bound"),
    (-(2.0**21), "exceed the bound")])
def test_every_rule_refuses_bad_values_naming_the_update_and_key(name, value, message):
    ups = _updates([[1.0, 2.0]] * 5)
    bad = torch.tensor([1.0, 2.0])
    bad[1] = value
    ups[3] = Update({"w": bad}, 1, ups[3].model_hash)
    with pytest.raises(InvalidUpdate, match=f"update 3: w: .*{message}"):
        build_strategy("fedavg", name).aggregate(_global([0.0, 0.0]), ups)


def test_the_bound_itself_is_allowed_and_sample_counts_are_checked():
    ups = _updates([[2.0**20, -(2.0**20)]])
    assert Mean("fedavg").aggregate(_global([0.0, 0.0]), ups)["w"].tolist() == [2.0**20, -(2.0**20)]
    for count in (0, -1, 2**31, True, 1.5):
        with pytest.raises(InvalidUpdate, match="sample counts"):
            Mean("fedavg").aggregate(_global([0.0]), [Update({"w": torch.zeros(1)}, count)])
    with pytest.raises(ValueError, match="nothing to aggregate"):
        Median("fedavg").aggregate(_global([0.0]), [])


def test_updates_without_a_hash_get_one_from_their_bytes():
    from fl.serialize import model_hash, state_to_bytes

    ups = [Update({"w": torch.tensor([float(i)])}, 1) for i in range(3)]
    ordered = Median("fedavg").update_list(ups)
    assert [u.model_hash for u in ordered] == sorted(model_hash(state_to_bytes(u.state)) for u in ups)


# --- the bound on each update's distance from the global model --------------------------------------
def test_an_update_beyond_the_norm_bound_is_refused_with_the_numbers():
    reference = _global([3.0, 4.0])  # norm 5
    strategy = Mean(update_norm_bound=0.5)  # at most 2.5 away
    [near, far] = _updates([[4.5, 5.0], [3.0, 7.0]])  # 1.8 and 3.0 away
    assert strategy.validate(reference, near) is near
    with pytest.raises(InvalidUpdate, match="3 away from the global model; the job allows at most 0.5 × its norm = 2.5"):
        strategy.validate(reference, far)


def test_clipping_scales_the_update_back_to_the_bound_along_its_direction():
    reference = _global([3.0, 4.0])
    strategy = Mean(update_norm_bound=0.5, update_norm_clip=1)
    [far] = _updates([[3.0, 104.0]])  # 100 away, straight up
    clipped = strategy.validate(reference, far)
    moved = clipped.state["w"].double() - reference["w"].double()
    assert moved[0] == 0 and 2.5 * (1 - 2**-20) <= float(moved.norm()) <= 2.5
    assert clipped.num_samples == far.num_samples and clipped.model_hash == far.model_hash
    assert torch.equal(strategy.validate(reference, clipped).state["w"], clipped.state["w"])  # idempotent
    honest = _updates([[3.5, 4.5]], hashes=[_hash(9)])[0]
    assert torch.equal(strategy.aggregate(reference, [far, honest])["w"],
                       Mean().aggregate(reference, [clipped, honest])["w"])


def test_the_norm_bound_options_are_checked():
    with pytest.raises(ValueError, match="update_norm_clip: 2 is out of range"):
        Mean(update_norm_clip=2)
    with pytest.raises(ValueError, match="update_norm_bound: -1.0 is out of range"):
        build_strategy("fedper", "median", update_norm_bound=-1.0)
    assert build_strategy("fedper", "krum", update_norm_bound=3.0).update_norm_bound == 3.0

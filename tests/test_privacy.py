"""Differential privacy: the budget against the accountant library's own figures, the noise
against the standard deviation the record claims (statistically), clipping, replay by an
auditor, the client side (clip, local noise, DP-SGD with Opacus) and a budget that stops a job."""

from __future__ import annotations

import math

import pytest
import torch

from config import load_config
from fl.datasets import load_dataset
from fl.privacy import Accounting, PrivacySpec, accounting, calibrate, epsilon, noise_fits, train_private
from fl.strategy.base import delta_norm
from fl.simulation import run_simulation
from fl.strategy import DifferentialPrivacy, InvalidUpdate, Mean, Median, TrainHook, Update
from fl.strategy.fedavgm import FedAvgM

DIGITS = load_dataset("digits")


def _reference(size: int = 4000) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"w": torch.randn(size) * 0.1, "b": torch.zeros(10), "steps": torch.tensor([3])}


def _updates(reference: dict[str, torch.Tensor], count: int, scale: float = 0.05) -> list[Update]:
    out = []
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        state = {k: (v + torch.randn(v.shape, generator=g) * scale) if v.is_floating_point() else v.clone()
                 for k, v in reference.items()}
        out.append(Update(state, 50 + i, f"{i:064x}"))
    return out


@pytest.mark.parametrize("z, rate, steps, rounds, delta", [(1.0, 1.0, 1, 30, 1e-5), (0.6, 1.0, 1, 10, 1e-5),
                                                          (1.1, 0.05, 40, 20, 1e-6), (2.5, 0.2, 5, 100, 1e-5)])
def test_epsilon_is_the_accountant_librarys_own_figure(z, rate, steps, rounds, delta):
    from opacus.accountants import RDPAccountant

    theirs = RDPAccountant()
    for _ in range(steps * rounds):  # the library's own way: one step at a time
        theirs.step(noise_multiplier=z, sample_rate=rate)
    assert epsilon(Accounting(z, rate, steps), rounds, delta) == pytest.approx(theirs.get_epsilon(delta), rel=1e-9)
    assert epsilon(Accounting(z, rate, steps), 0, delta) == 0.0


@pytest.mark.parametrize("mechanism, target", [("central", 8.0), ("central", 1.0), ("local", 3.0)])
def test_a_target_epsilon_is_met_by_the_calibrated_noise(mechanism, target):
    spec = PrivacySpec(mechanism, clip_norm=1.0, target_epsilon=target)
    z = calibrate(spec, rounds=30)
    spent = epsilon(accounting(spec, z), 30, spec.delta)
    assert target * 0.99 <= spent <= target  # the whole budget, never more
    assert epsilon(accounting(spec, z * 0.97), 30, spec.delta) > target  # and not a noise louder than needed


def test_dp_sgd_is_accounted_per_example_on_the_smallest_edge_node():
    spec = PrivacySpec("dpsgd", clip_norm=1.0, noise_multiplier=1.0)
    shape = accounting(spec, 1.0, local_samples=200, batch_size=16, local_epochs=2)
    assert shape == Accounting(1.0, 16 / 200, 2 * 13)


def test_central_noise_has_the_recorded_standard_deviation_over_many_draws():
    reference, count, z, clip = _reference(), 5, 1.3, 0.5
    strategy = DifferentialPrivacy(Mean("fedavg"), PrivacySpec("central", clip_norm=clip, noise_multiplier=z), 10)
    strategy.configure_train(1)
    clean = Mean("fedavg").aggregate(reference, [strategy.validate(reference, u) for u in _updates(reference, count)])
    draws = []
    for _ in range(40):
        noised = strategy.aggregate(reference, _updates(reference, count))
        draws.append(torch.cat([(noised[k].double() - clean[k].double()).reshape(-1) for k in ("b", "w")]))
        assert torch.equal(noised["steps"], reference["steps"])  # integers take no noise
    noise = torch.stack(draws)
    expected = z * clip / count
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())
    record = strategy.round_record()["privacy"]
    assert float(record["noise_stddev"]) == expected and record["updates"] == str(count)
    assert noise_fits([noise[0]], expected) is None
    assert noise_fits([noise[0]], expected * 0.9) is not None and noise_fits([noise[0] * 0.9], expected) is not None
    assert noise_fits([noise[0] + expected * 0.2], expected) is not None  # a biased "noise"


def test_clipping_weights_and_refusals_per_mechanism():
    reference = _reference()
    keys = ["b", "w"]
    far = _updates(reference, 1, scale=1.0)[0]  # delta norm ≈ 63
    central = DifferentialPrivacy(Mean("fedavg"), PrivacySpec("central", clip_norm=2.0, noise_multiplier=1.0), 5)
    clipped = central.validate(reference, far)
    assert clipped.num_samples == 1 and delta_norm(clipped.state, reference, keys) <= 2.0
    assert delta_norm(clipped.state, reference, keys) > 2.0 * (1 - 1e-5)
    assert torch.equal(central.validate(reference, far).state["w"], clipped.state["w"])  # deterministic
    client = DifferentialPrivacy(Mean("fedavg"), PrivacySpec("central_client", clip_norm=2.0, noise_multiplier=1.0), 5)
    with pytest.raises(InvalidUpdate, match="beyond"):
        client.validate(reference, far)
    assert client.validate(reference, clipped).num_samples == 1
    local = DifferentialPrivacy(Mean("fedavg"), PrivacySpec("local", clip_norm=2.0, noise_multiplier=0.5), 5)
    assert local.validate(reference, far).num_samples == 1  # 63 < 2 + 1.0·(√4010 + 10): the noise explains it
    with pytest.raises(InvalidUpdate, match="beyond"):
        local.validate(reference, _updates(reference, 1, scale=3.0)[0])
    with pytest.raises(ValueError, match="rule that averages"):
        DifferentialPrivacy(Median("fedavg"), PrivacySpec("central", noise_multiplier=1.0), 5)
    with pytest.raises(ValueError, match="dp_noise .* or dp_epsilon"):
        PrivacySpec("central")


def test_an_auditor_replays_a_dp_round_and_catches_a_record_that_does_not_follow():
    reference = _reference()
    spec = PrivacySpec("central", clip_norm=0.5, noise_multiplier=1.0, target_epsilon=50.0)
    entry = DifferentialPrivacy(FedAvgM("fedavg"), spec, 10)
    entry.configure_train(1)
    result = entry.aggregate(reference, _updates(reference, 4))
    record, models = {**entry.round_record()}, entry.round_models()
    auditor = DifferentialPrivacy(FedAvgM("fedavg"), spec, 10)
    auditor.configure_train(1)
    combined = auditor.accumulator(reference)
    for update in _updates(reference, 4):
        combined.add(auditor.validate(reference, update), checked=True)
    replayed = auditor.replay(reference, combined, record, models)
    assert all(torch.equal(replayed[k], result[k]) for k in result)  # FedAvgM's step from the noised mean, exactly
    fresh = DifferentialPrivacy(FedAvgM("fedavg"), spec, 10)
    fresh.configure_train(1)
    with pytest.raises(ValueError, match="epsilon"):
        fresh.replay(reference, combined, {"privacy": {**record["privacy"], "epsilon": "0.1"}}, models)
    louder = {k: (v + torch.randn(v.shape) * 0.3) if v.is_floating_point() else v for k, v in models["noised"].items()}
    with pytest.raises(ValueError, match="standard deviation"):
        fresh.replay(reference, combined, record, {"noised": louder})


def test_the_client_clips_and_adds_local_noise_and_refuses_unknown_settings():
    reference = _reference(20000)
    trained = _updates(reference, 1, scale=1.0)[0].state
    strategy = DifferentialPrivacy(Mean("fedavg"), PrivacySpec("local", clip_norm=1.5, noise_multiplier=0.4), 5)
    hook = TrainHook.from_config(strategy.configure_train(1))
    assert (hook.dp_clip, hook.dp_noise) == (1.5, 0.4)
    sent = hook.finish(trained, reference)
    noise = torch.cat([(sent[k].double() - reference[k].double()).reshape(-1) for k in ("b", "w")])
    assert float(noise.std()) == pytest.approx(0.4 * 1.5, rel=0.03)  # the clipped delta (norm 1.5) is tiny beside it
    only_clip = TrainHook.from_config({"dp_clip": "1.5"}).finish(trained, reference)
    assert delta_norm(only_clip, reference, ["b", "w"]) <= 1.5
    with pytest.raises(ValueError, match="dp_noise needs dp_clip"):
        TrainHook.from_config({"dp_noise": "1"})
    with pytest.raises(ValueError, match="dp_clip"):
        TrainHook.from_config({"dp_clip": "0"})


def test_dp_sgd_trains_with_opacus_and_gives_the_model_back_as_it_was():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = DIGITS.x[:300], DIGITS.y[:300]
    samples, loss = train_private(model, x, y, epochs=1, lr=0.1, batch_size=32, momentum=0.0, seed=1,
                                  clip_norm=1.0, noise_multiplier=0.5)
    assert samples == 300 and math.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # no per-example state left behind
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def _conf(**overrides):
    base = {"dataset": "digits", "client.amount": 4, "gobal_epoch": 5, "BATCH_SIZE": 16, "learn_rate": 0.05,
            "workers": 1, "strategy": "fedavg"}
    return load_config(env={}, overrides={**base, **overrides})


def test_a_simulation_stops_when_the_next_round_would_exceed_the_budget():
    spent = [epsilon(Accounting(1.0, 1.0, 1), r, 1e-5) for r in (2, 3)]
    target = (spent[0] + spent[1]) / 2
    result = run_simulation(_conf(dp="central", dp_noise=1.0, dp_epsilon=target), dataset=DIGITS)
    assert [r.round for r in result.rounds] == [1, 2]
    assert "privacy budget is spent: round 3" in result.stopped
    assert float(result.rounds[-1].privacy["epsilon"]) == pytest.approx(spent[0], rel=1e-5)
    assert spent[0] <= target


@pytest.mark.parametrize("mechanism, extra", [("central_client", {"dp_noise": 0.3}), ("local", {"dp_noise": 0.01}),
                                              ("dpsgd", {"dp_noise": 0.7, "dp_clip": 1.0})])
def test_every_mechanism_runs_in_the_simulation_and_records_its_budget(mechanism, extra):
    result = run_simulation(_conf(dp=mechanism, gobal_epoch=2, **extra), dataset=DIGITS)
    assert len(result.rounds) == 2 and not result.stopped
    record = result.rounds[-1].privacy
    assert record["mechanism"] == mechanism and record["updates"] == "4" and float(record["epsilon"]) > 0
    assert all(math.isfinite(r.acc_weighted) for r in result.rounds)


def test_adaptive_clipping_tracks_the_quantile_composes_exactly_and_replays():
    reference = _reference()
    spec = PrivacySpec("central", clip_norm=0.5, noise_multiplier=0.2, clipping="adaptive", target_quantile=0.5,
                       clip_lr=0.2, count_noise=0.5)
    entry = DifferentialPrivacy(Mean("fedavg"), spec, 30, clients=8)
    assert entry.update_noise_multiplier == pytest.approx((25 - 4) ** -0.5)  # z_Δ = (z⁻² − σ_b⁻²)^(−1/2)
    updates = _updates(reference, 8, scale=0.05)  # every delta ≈ 3.2: all beyond C = 0.5
    clips = []
    for round_number in (1, 2, 3):
        entry.configure_train(round_number)
        assert entry.validate_config(round_number) == {"dp_clip": repr(entry.clip_norm)}
        clips.append(entry.clip_norm)
        halves = [entry.accumulator(reference), entry.accumulator(reference)]  # two supernodes
        for i, update in enumerate(updates):
            halves[i % 2].add(entry.validate(reference, update), checked=True)
        halves[0].merge(halves[1])
        entry.finalize(reference, halves[0])
        record = entry.round_record()["privacy"]
        assert "unclipped" not in record and record["clipping"] == "adaptive"  # only the noised count
        assert float(record["next_clip_norm"]) == entry.clip_norm
    assert clips[0] < clips[1] < clips[2] < entry.clip_norm  # none within C: C grows (b̃/n − γ < 0 unless N(0,1) > 8)
    assert entry.state_dict()["clip_norm.value"].item() == entry.clip_norm

    auditor = DifferentialPrivacy(Mean("fedavg"), spec, 30, clients=8)
    auditor.configure_train(1)
    auditor.set_validate_config({"dp_clip": repr(0.5)})
    total = auditor.accumulator(reference)
    for update in updates:
        total.add(auditor.validate(reference, update), checked=True)
    first = DifferentialPrivacy(Mean("fedavg"), spec, 30, clients=8)
    first.configure_train(1)
    first.finalize(reference, total)
    auditor.replay(reference, total, first.round_record(), first.round_models())
    assert auditor.clip_norm == first.clip_norm  # the next round's C follows from the record
    lying = {"privacy": {**first.round_record()["privacy"], "unclipped_noised": "4.0"}}
    with pytest.raises(ValueError, match="6 σ_b"):
        DifferentialPrivacy(Mean("fedavg"), spec, 30, clients=8).replay(reference, total, lying, first.round_models())
    with pytest.raises(ValueError, match="needs dp=central"):
        PrivacySpec("local", noise_multiplier=1.0, clipping="adaptive")
    with pytest.raises(ValueError, match="dp_count_noise > z"):
        DifferentialPrivacy(Mean("fedavg"), PrivacySpec("central", noise_multiplier=3.0, clipping="adaptive",
                                                        count_noise=2.0), 5).check_fits(4)


def test_adaptive_clipping_runs_in_the_simulation():
    result = run_simulation(_conf(dp="central", dp_noise=0.5, dp_clip=0.1, dp_clipping="adaptive", gobal_epoch=3),
                            dataset=DIGITS)
    norms = [float(r.privacy["clip_norm"]) for r in result.rounds]
    assert len(set(norms)) == 3 and all(n > 0 for n in norms)
    assert float(result.rounds[0].privacy["next_clip_norm"]) == norms[1]

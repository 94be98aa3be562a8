import json

import pytest
import torch

from config import load_config
from fl.__main__ import main
from fl.datasets import load_dataset
from fl.federation import JobSpec, client_indices
from fl.serialize import model_hash, state_from_bytes
from fl.simulation import run_simulation

DIGITS = load_dataset("digits")


def _conf(**overrides):
    base = {"dataset": "digits", "client.amount": 5, "gobal_epoch": 3, "BATCH_SIZE": 16,
            "learn_rate": 0.05, "workers": 1}
    return load_config(env={}, overrides={**base, **overrides})


def test_fedper_on_digits_learns_well_above_chance():
    result = run_simulation(_conf(), dataset=DIGITS)
    accs = [r.acc_weighted for r in result.rounds]
    assert len(accs) == 3
    assert accs[-1] > 0.6  # chance is 0.1
    assert accs[-1] > accs[0]
    assert sum(result.num_train) + sum(result.num_test) == len(DIGITS)


def test_runs_repeat_exactly_and_barely_depend_on_workers():
    one = run_simulation(_conf(gobal_epoch=2, workers=2), dataset=DIGITS)
    again = run_simulation(_conf(gobal_epoch=2, workers=2), dataset=DIGITS)
    assert [r.acc_weighted for r in one.rounds] == [r.acc_weighted for r in again.rounds]
    assert all(torch.equal(one.global_state[k], again.global_state[k]) for k in one.global_state)
    # one process with 2 threads sums in another order than 2 processes with 1 thread each
    serial = run_simulation(_conf(gobal_epoch=2, workers=1), dataset=DIGITS)
    assert all(torch.allclose(one.global_state[k], serial.global_state[k], atol=1e-4) for k in one.global_state)


def test_fedper_keeps_heads_personal_and_fedavg_shares_them():
    fedper = run_simulation(_conf(gobal_epoch=1, partition="pathological"), dataset=DIGITS)
    heads = [s["fc.weight"] for s in fedper.personal_states]
    assert set(fedper.personal_states[0]) == {"fc.weight", "fc.bias"}
    assert set(fedper.global_state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert not torch.equal(heads[0], heads[1])
    fedavg = run_simulation(_conf(gobal_epoch=1, strategy="fedavg"), dataset=DIGITS)
    assert fedavg.personal_states[0] == {}
    assert "fc.weight" in fedavg.global_state
    local = run_simulation(_conf(gobal_epoch=1, strategy="local"), dataset=DIGITS)
    assert local.global_state == {}
    assert set(local.personal_states[0]) == set(fedavg.global_state)
    assert not torch.equal(local.personal_states[0]["fc1.weight"], local.personal_states[1]["fc1.weight"])


def test_too_many_clients_for_the_data_is_a_clear_error():
    with pytest.raises(ValueError, match="2000 clients but only 1797 samples"):
        run_simulation(_conf(**{"client.amount": 2000}), dataset=DIGITS)
    with pytest.raises(ValueError, match="client .* got no training samples from the pathological partition"):
        client_indices(DIGITS.y.numpy(), JobSpec.from_config(_conf(**{"client.amount": 1500,
                                                                       "partition": "pathological"})))


def test_a_client_with_one_sample_trains_and_is_not_counted_in_the_per_client_accuracy():
    from fl.train import EvalResult, summarize

    splits = client_indices(DIGITS.y.numpy(), JobSpec.from_config(_conf(**{"client.amount": 1000,
                                                                          "partition": "iid"})))
    assert min(len(s.train) for s in splits) >= 1 and min(len(s.test) for s in splits) == 0
    summary = summarize([EvalResult(3, 1.0, 4), EvalResult(0, 0.0, 0)])
    assert summary["acc_min"] == summary["acc_max"] == summary["acc_mean"] == 0.75


def test_local_open_eval_and_open_eval_off():
    result = run_simulation(_conf(gobal_epoch=2, openEval=False, local_OpenEval=True), dataset=DIGITS)
    assert result.rounds[0].acc_weighted != result.rounds[0].acc_weighted  # NaN: not evaluated
    assert 0 < result.rounds[-1].acc_weighted <= 1  # the last round is always evaluated
    assert result.best_accuracy == result.final_accuracy == result.rounds[-1].acc_weighted
    assert result.rounds[0].as_dict()["acc_weighted"] is None
    assert all(r.local_acc_weighted is not None for r in result.rounds)


def test_model_that_does_not_fit_the_data_is_a_clear_error():
    with pytest.raises(ValueError, match="does not accept digits samples"):
        run_simulation(_conf(model="cnn_mnist"), dataset=DIGITS)


@pytest.fixture(autouse=True)
def _no_fl_environment(monkeypatch):
    """The CLI reads FL_* variables; a stray one in the caller's shell must not leak in."""
    for name in [n for n in __import__("os").environ if n.startswith("FL_")]:
        monkeypatch.delenv(name)


def test_cli_writes_table_plot_metrics_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--clients", "4", "--rounds", "2", "--strategy", "fedper",
                 "--batch-size", "16", "--lr", "0.05", "--workers", "1", "--show-partition",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "training samples per client and class" in printed
    assert "final accuracy" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    model_bytes = (out / "global_model.safetensors").read_bytes()
    assert metrics["global_model_sha256"] == model_hash(model_bytes)
    # FedPer's global model is the shared base; each head stays with its client
    assert set(state_from_bytes(model_bytes)) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    personal = state_from_bytes((out / "personal_layers.safetensors").read_bytes())
    assert set(personal) == {f"client{i}.{k}" for i in range(4) for k in ("fc.weight", "fc.bias")}
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_config_and_dataset_errors(tmp_path, capsys):
    assert main(["--clients", "0"]) == 2
    assert "client.amount" in capsys.readouterr().out
    assert main(["--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "no mnist IDX files" in capsys.readouterr().out


# --- aggregation rules ------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", ["mean", "fedavgm", "fedadam", "median", "trimmed_mean", "krum"])
def test_every_rule_runs_two_rounds_and_repeats_exactly(aggregation):
    from fl.serialize import state_to_bytes
    from fl.simulation import SimulationResult

    conf = _conf(gobal_epoch=2, strategy="fedavg", aggregation=aggregation, proximal_mu=0.01)
    runs: list[SimulationResult] = [run_simulation(conf, dataset=DIGITS) for _ in range(2)]
    hashes = [model_hash(state_to_bytes(r.global_state)) for r in runs]
    assert hashes[0] == hashes[1]
    assert [r.acc_weighted for r in runs[0].rounds] == [r.acc_weighted for r in runs[1].rounds]
    assert len(runs[0].rounds) == 2 and "fc.weight" in runs[0].global_state
    floor = 0.15 if aggregation == "fedadam" else 0.5  # fedadam moves ~adam_lr per coordinate a round
    assert runs[0].final_accuracy > floor  # chance is 0.1


def test_a_rule_that_does_not_fit_the_job_stops_before_training():
    with pytest.raises(ValueError, match=r"krum with krum_f=2 needs at least 2\*krum_f\+3 = 7 clients, the job has 5"):
        run_simulation(_conf(aggregation="krum", krum_f=2), dataset=DIGITS)


def test_cli_takes_the_aggregation_flags(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--dataset", "digits", "--clients", "5", "--rounds", "1", "--strategy", "fedavg",
                 "--aggregation", "trimmed_mean", "--trim-beta", "0.2", "--proximal-mu", "0.01",
                 "--batch-size", "16", "--lr", "0.05", "--workers", "1", "--quiet", "--out", str(out)])
    assert code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "fedavg + trimmed_mean + FedProx mu=0.01 on digits" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["aggregation"], metrics["config"]["trim_beta"]) == ("trimmed_mean", 0.2)
    assert main(["--dataset", "digits", "--clients", "5", "--aggregation", "median", "--krum-f", "1"]) == 2
    assert "krum_f applies to aggregation='krum', not 'median'" in " ".join(capsys.readouterr().out.split())
    assert main(["--dataset", "digits", "--clients", "4", "--aggregation", "krum", "--krum-f", "1"]) == 2
    assert "needs at least 2*krum_f+3 = 5 clients, the job has 4" in " ".join(capsys.readouterr().out.split())


def test_the_learning_curves_show_the_band_over_edge_nodes_the_losses_and_each_nodes_final_accuracy(tmp_path):
    from matplotlib.collections import PolyCollection

    from fl.plot import accuracy_figure
    from fl.simulation import RoundMetrics

    def rounds(shift: float) -> list[RoundMetrics]:
        return [RoundMetrics(round=r, acc_weighted=0.5 + shift + r / 20, acc_mean=0.5, acc_min=0.3 + r / 20,
                             acc_max=0.8 + r / 50, loss=1.0 / r, train_loss=1.2 / r, seconds=0.1) for r in (1, 2, 3)]

    figure = accuracy_figure({"fedper": rounds(0.1), "fedavg": rounds(0.0)}, "two strategies",
                             {"fedper": [0.9, 0.8, 0.95], "fedavg": [0.7, 0.75, 0.6]})
    accuracy, loss, nodes = figure.axes
    assert len([c for c in accuracy.collections if isinstance(c, PolyCollection)]) == 2  # a min–max band each
    assert [t for t in accuracy.get_xticks() if 1 <= t <= 3] == [1, 2, 3]  # whole rounds
    assert len(loss.get_lines()) == 4  # test and training loss of each run
    assert len(nodes.patches) == 6  # each run's edge nodes

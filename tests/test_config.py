import pytest

from config import ConfigError, load_config, my_conf, parse_assignments


def test_defaults_keep_the_users_names_and_values():
    conf = load_config(env={})
    assert conf["client.amount"] == 10
    assert conf["local_epoch"] == 2
    assert conf["local_OpenEval"] is False
    assert conf["gobal_epoch"] == 20
    assert conf["openEval"] is True
    assert conf["dataset"] == "cifar"
    assert conf["learn_rate"] == 0.01
    assert conf["BATCH_SIZE"] == 64
    assert conf is not my_conf


def test_file_then_env_then_flags(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('dataset = "digits"\nlearn_rate = 0.5\n[client]\namount = 4\n')
    conf = load_config(file, env={"FL_LEARN_RATE": "0.25", "FL_LOCAL_OPENEVAL": "yes"},
                       overrides={"client.amount": "7"})
    assert conf["dataset"] == "digits"  # file
    assert conf["learn_rate"] == 0.25  # env beats file
    assert conf["local_OpenEval"] is True
    assert conf["client.amount"] == 7  # flag beats file


def test_dotted_key_in_file(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('"client.amount" = 3\n')
    assert load_config(file, env={})["client.amount"] == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"no_such_key": 1}, "unknown configuration key 'no_such_key'"),
        ({"client.amount": "ten"}, "client.amount from command line: expected int"),
        ({"client.amount": True}, "expected int"),
        ({"openEval": "maybe"}, "use true/false"),
        ({"learn_rate": -1}, "out of range"),
        ({"strategy": "fedsgd"}, "one of fedper, fedavg, local"),
        ({"train_fraction": 1.0}, "between 0 and 1"),
        ({"seed": -1}, "seed from command line: -1 is out of range"),
        ({"learn_rate": "inf"}, "learn_rate from command line: 'inf' is not a finite number"),
        ({"momentum": float("nan")}, "not a finite number"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, overrides=overrides)


def test_unknown_env_variable_is_an_error():
    with pytest.raises(ConfigError, match="FL_CLIENTS"):
        load_config(env={"FL_CLIENTS": "3"})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("dataset = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_choices_are_case_insensitive_and_aliases_accepted():
    conf = load_config(env={}, overrides={"dataset": "FMNIST", "strategy": "FedAvg"})
    assert (conf["dataset"], conf["strategy"]) == ("fmnist", "fedavg")


def test_parse_assignments():
    assert parse_assignments(["a=1", "b = x=y"]) == {"a": "1", "b": " x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["novalue"])


# --- aggregation rules and their options --------------------------------------------------------------
def test_aggregation_keys_and_their_defaults():
    from fl.names import OPTION_DEFAULTS

    conf = load_config(env={})
    assert conf["aggregation"] == "mean" and conf["proximal_mu"] == 0.0
    assert {k: conf[k] for k in OPTION_DEFAULTS} == OPTION_DEFAULTS  # one set of defaults
    assert (conf["server_lr"], conf["server_momentum"]) == (1.0, 0.9)
    assert (conf["adam_lr"], conf["adam_beta1"], conf["adam_beta2"], conf["adam_tau"]) == (0.01, 0.9, 0.99, 1e-3)
    assert (conf["trim_beta"], conf["krum_f"], conf["krum_m"]) == (0.2, 1, 1)
    conf = load_config(env={"FL_AGGREGATION": "Krum", "FL_KRUM_F": "2"}, overrides={"krum_m": "3"})
    assert (conf["aggregation"], conf["krum_f"], conf["krum_m"]) == ("krum", 2, 3)


@pytest.mark.parametrize("overrides, message", [
    ({"aggregation": "bulyan"}, "one of mean, fedavgm, fedadam, median, trimmed_mean, krum"),
    ({"aggregation": "trimmed_mean", "trim_beta": 0.5}, r"trim_beta from command line: 0.5 is out of range, expected in \[0, 0.5\)"),
    ({"aggregation": "trimmed_mean", "trim_beta": -0.1}, "trim_beta .* out of range"),
    ({"aggregation": "krum", "krum_f": -1}, "krum_f from command line: -1 is out of range, expected >= 0"),
    ({"aggregation": "krum", "krum_m": 0}, "krum_m .* expected >= 1"),
    ({"aggregation": "krum", "krum_f": "1.5"}, "krum_f from command line: expected int"),
    ({"proximal_mu": -0.01}, "proximal_mu .* expected >= 0"),
    ({"proximal_mu": "nan"}, "proximal_mu .* not a finite number"),
    ({"aggregation": "fedavgm", "server_lr": 0}, "server_lr .* expected > 0"),
    ({"aggregation": "fedavgm", "server_momentum": 1.0}, r"server_momentum .* expected in \[0, 1\)"),
    ({"aggregation": "fedadam", "adam_lr": -1}, "adam_lr .* expected > 0"),
    ({"aggregation": "fedadam", "adam_beta1": 1.0}, r"adam_beta1 .* expected in \[0, 1\)"),
    ({"aggregation": "fedadam", "adam_beta2": -0.5}, r"adam_beta2 .* expected in \[0, 1\)"),
    ({"aggregation": "fedadam", "adam_tau": 0.0}, "adam_tau .* expected > 0"),
])
def test_aggregation_values_out_of_range(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, overrides=overrides)


def test_an_option_of_another_rule_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"krum_f applies to aggregation='krum', not 'median' \(krum_f from command line\)"):
        load_config(env={}, overrides={"aggregation": "median", "krum_f": 2})
    with pytest.raises(ConfigError, match=r"server_lr applies to aggregation='fedavgm', not 'mean' \(server_lr from environment variable FL_SERVER_LR\)"):
        load_config(env={"FL_SERVER_LR": "0.5"})
    file = tmp_path / "run.toml"
    file.write_text("trim_beta = 0.1\n")
    with pytest.raises(ConfigError, match=r"trim_beta applies to aggregation='trimmed_mean', not 'krum' \(trim_beta from config file"):
        load_config(file, env={}, overrides={"aggregation": "krum"})
    # the client hook goes with every rule; a rule's own options with that rule are fine
    assert load_config(env={}, overrides={"aggregation": "median", "proximal_mu": 0.1})["proximal_mu"] == 0.1
    assert load_config(file, env={}, overrides={"aggregation": "trimmed_mean"})["trim_beta"] == 0.1


@pytest.mark.parametrize("aggregation, clients, options, message", [
    ("krum", 4, {}, r"krum with krum_f=1 needs at least 2\*krum_f\+3 = 5 clients, the job has 4"),
    ("krum", 20, {"krum_f": 6, "krum_m": 15}, r"krum_m=15 selects more updates than the n-krum_f = 14"),
    ("trimmed_mean", 4, {"trim_beta": 0.2}, r"cuts int\(0.2\*4\) = 0 updates per end with 4 clients"),
])
def test_a_rule_that_does_not_fit_the_job_is_explained(aggregation, clients, options, message):
    from fl.options import fit_problem

    conf = load_config(env={}, overrides={"aggregation": aggregation, "client.amount": clients, **options})
    problem = fit_problem(conf["aggregation"], conf["client.amount"], conf)
    assert problem is not None and __import__("re").search(message, problem)
    assert fit_problem(conf["aggregation"], 40, conf) is None  # enough clients


def test_config_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, config; config.load_config(env={}); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("pathlib").Path(__file__).parents[1])

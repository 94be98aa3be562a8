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

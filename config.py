"""FedLedger configuration: the defaults users know, and how to override them.

``my_conf`` keeps the key names of the original project (``client.amount``, ``gobal_epoch``
with its historical spelling, ``BATCH_SIZE`` ...) so existing habits and scripts keep working.
The engine's own settings sit beside them.

Overrides are applied in a fixed order, later ones winning:

1. a TOML file (``--config run.toml``; nested tables flatten with dots, so
   ``[client] amount = 4`` and ``"client.amount" = 4`` mean the same),
2. environment variables ``FL_<KEY>`` (key upper-cased, dots as underscores:
   ``FL_CLIENT_AMOUNT=4``, ``FL_LEARN_RATE=0.05``),
3. command-line flags (``--set key=value`` or a program's own flags).

Every value is checked against the default's type and the key's allowed values; an unknown
key or a wrong type raises :class:`ConfigError` naming the key, the source and what is expected.
An aggregation option set explicitly for another rule than ``aggregation`` (``krum_f`` with
``aggregation = "median"``) is such an error too (``fl/options.py`` says which rule takes which).
"""

from __future__ import annotations

import math

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fl.names import (AGGREGATIONS, DATASET_ALIASES, DATASETS, DEVICES, DP_CLIPPINGS, DP_MECHANISMS, MODELS, PARTITIONS,
                      SCORE_METHODS, SPLIT_LABELS, STRATEGIES, LORA_VARIANTS, TEXT_DATASETS)
from fl.options import OPTION_RULES, check_options

my_conf: dict[str, Any] = {
    # --- the names users know from the original project ---
    "client.amount": 10,  # number of clients (edge nodes) in a job
    "local_epoch": 2,  # local epochs per round
    "local_OpenEval": False,  # clients also evaluate right after local training
    "gobal_epoch": 20,  # global rounds (historical spelling kept on purpose)
    "openEval": True,  # evaluate every round (else only after the last)
    "dataset": "cifar",  # digits | mnist | fashionmnist | cifar10 (alias: cifar)
    "learn_rate": 0.01,
    "BATCH_SIZE": 64,
    # --- the engine's settings ---
    "strategy": "fedper",  # what is shared: fedper (base layers) | fedavg (everything) | local (nothing)
    #   | distill (outputs on a public set) | split | splitfed (split learning; see fl/split.py)
    "aggregation": "mean",  # how updates combine: mean | fedavgm | fedadam | median | trimmed_mean | krum
    "proximal_mu": 0.0,  # FedProx: clients add mu/2*||w - w_global||^2 over the shared layers (0 = off)
    "update_norm_bound": 0.0,  # any rule: ||update - global|| at most this times ||global|| (0 = no bound)
    "update_norm_clip": 0,  # 0: refuse an update beyond the bound; 1: scale it back to the bound
    "server_lr": 1.0,  # fedavgm: server learning rate
    "server_momentum": 0.9,  # fedavgm: server momentum
    "adam_lr": 0.01,  # fedadam: server learning rate (eta)
    "adam_beta1": 0.9,  # fedadam: first-moment decay
    "adam_beta2": 0.99,  # fedadam: second-moment decay
    "adam_tau": 1e-3,  # fedadam: adaptivity (tau)
    "trim_beta": 0.2,  # trimmed_mean: share cut at each end per coordinate, int(beta*n) updates
    "krum_f": 1,  # krum: attackers assumed (needs clients >= 2f+3)
    "krum_m": 1,  # krum: updates selected (m > 1: Multi-Krum, their mean)
    "dp": "off",  # differential privacy: off | central | central_client | local | dpsgd (fl/privacy.py)
    "dp_clip": 1.0,  # dp: the L2 clip norm C of each edge node's contribution
    "dp_noise": 0.0,  # dp: the noise multiplier z (noise stddev = z*C); 0 with dp_epsilon: calibrated
    "dp_epsilon": 0.0,  # dp: the job's target epsilon (0: none, then dp_noise must be set)
    "dp_delta": 1e-5,  # dp: delta of the (epsilon, delta) guarantee
    "dp_clipping": "fixed",  # dp=central: fixed | adaptive (the clip norm tracks a quantile of the update norms)
    "dp_target_quantile": 0.5,  # adaptive clipping: the share of updates the clip norm should leave unclipped
    "dp_clip_lr": 0.2,  # adaptive clipping: the clip norm's (geometric) learning rate
    "dp_count_noise": 0.0,  # adaptive clipping: stddev of the noise on the unclipped count (0: max(n/20, 2z))
    "scores": "off",  # contribution scores per round: off | flb (FLB's formula and free-rider flags) | loo | gtg
    "distill_alpha": 0.5,  # distill: weight of the distance from the consensus in each client's loss
    "distill_l2": 1,  # distill: 1 squared error of the logits (GFL's l2_dist) | 0 KL divergence
    "distill_public": 500,  # distill: samples of the dataset held out as the public set
    "split_layers": 1,  # split | splitfed: layers below the cut, trained on the edge node
    "split_labels": "server",  # split | splitfed: server (labels sent with the activations) | edge (U-shaped)
    "model": "auto",  # auto (by dataset) | mlp | mlp_small | cnn_mnist | cnn_cifar; distill: several, comma-separated
    #   | lora (a causal language model from model_path, fine-tuned with LoRA; dataset stdlib or text)
    "model_path": "",  # model=lora: a local folder holding a causal LM (transformers' save_pretrained); never fetched
    "lora_rank": 8,  # model=lora: the adapters' rank r
    "lora_alpha": 16.0,  # model=lora: the adapters' scale alpha (the update is alpha/r * B A)
    "lora_variant": "fedavg",  # model=lora: fedavg (A and B trained and averaged) | ffa (FFA-LoRA: A frozen, exact)
    "block_size": 128,  # model=lora: tokens per training sequence
    "text_blocks": 0,  # model=lora: at most this many blocks of each family of text, evenly spaced (0: all)
    "head_layers": 1,  # how many of the last parameterised layers form the head
    "momentum": 0.9,  # SGD momentum (0 for plain SGD, as in the PFLlib benchmark setup)
    "partition": "iid",  # iid | pathological | dirichlet
    "classes_per_client": 2,  # for the pathological partition
    "dirichlet_alpha": 0.1,  # for the Dirichlet partition (smaller = more skewed)
    "train_fraction": 0.75,  # each client's own train/test split
    "seed": 0,
    "device": "auto",  # auto (CUDA when present) | cpu | cuda
    "data_dir": "data",  # where mnist/fashionmnist/cifar10 files live
    "workers": 0,  # training processes in the simulation; 0 = one per CPU core
    # --- the node network's settings ---
    "heartbeat_interval": 1.0,  # seconds between heartbeats (EN -> its SN, SN -> entry SN)
    "dead_after": 3.0,  # seconds without a heartbeat before a node counts as dead
    "block_interval": 0.5,  # the entry SN seals pending transactions at least this often (s)
    "block_max_txs": 500,  # ... or as soon as this many are pending
    "max_model_mb": 1024,  # the largest model a node accepts over the wire
    "model_store_mb": 10240,  # disk a supernode keeps received models on (<home>/models), newest first
    "round_timeout": 300.0,  # seconds an edge node has for one round before it is left out
    "round_attempts": 3,  # a round that fails is tried again this many times in all before the job fails
    "ledger_outage_s": 600.0,  # the entry node's database down this long: the job waiting for it pauses
    # torch (OpenMP) threads per node process (several nodes often share a host's cores); 0: auto,
    # the process's share of its cores among the node processes running on the host (node/cores.py)
    "torch_threads": 1,
    "own_data": False,  # jobs: edge nodes train on everything in their data_dir instead of their job shard
    "max_samples": 100_000,  # own-data jobs: the most training samples an edge node may claim
    "recompute_partials": True,  # jobs: the entry node re-sums each supernode's partial from its updates
    "edge_parallelism": 0,  # edge nodes a supernode asks at once in a round (0: all of them)
    "cert_days": 365,  # how long the certificates the entry node's CA issues at enrolment last
    "streams_per_peer": 4,  # model and block streams one caller may hold with a node at once
    "stream_idle_s": 30.0,  # a stream that moves nothing for this long is cancelled
}

ENV_PREFIX = "FL_"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"one of {', '.join(allowed)}"


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f">= {low}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "> 0"


def _fraction(v: Any) -> str | None:
    return None if 0 < v < 1 else "between 0 and 1 (exclusive)"


_RULES: dict[str, Callable[[Any], str | None]] = {
    "client.amount": _at_least(1),
    "local_epoch": _at_least(1),
    "gobal_epoch": _at_least(1),
    "learn_rate": _positive,
    "BATCH_SIZE": _at_least(1),
    "dataset": _choice(*DATASETS, *DATASET_ALIASES),
    "strategy": _choice(*STRATEGIES),
    "aggregation": _choice(*AGGREGATIONS),
    **OPTION_RULES,
    "dp": _choice(*DP_MECHANISMS),
    "dp_clip": _positive,
    "dp_noise": _at_least(0),
    "dp_epsilon": _at_least(0),
    "dp_delta": _fraction,
    "dp_clipping": _choice(*DP_CLIPPINGS),
    "scores": _choice(*SCORE_METHODS),
    "dp_target_quantile": _fraction,
    "dp_clip_lr": _positive,
    "dp_count_noise": _at_least(0),
    "model": lambda v: None if all(name in MODELS for name in v.split(",")) else
    f"one of {', '.join(MODELS)}, or (strategy=distill) several of them separated by commas",
    "distill_public": _at_least(1),
    "split_layers": _at_least(1),
    "lora_rank": _at_least(1),
    "lora_alpha": _positive,
    "lora_variant": _choice(*LORA_VARIANTS),
    "block_size": lambda v: None if 8 <= v <= 8192 else "between 8 and 8192 tokens",
    "text_blocks": _at_least(0),
    "split_labels": _choice(*SPLIT_LABELS),
    "head_layers": _at_least(1),
    "momentum": lambda v: None if 0 <= v < 1 else "in [0, 1)",
    "partition": _choice(*PARTITIONS),
    "classes_per_client": _at_least(1),
    "dirichlet_alpha": _positive,
    "train_fraction": _fraction,
    "device": _choice(*DEVICES),
    "workers": _at_least(0),
    "seed": _at_least(0),
    "heartbeat_interval": _positive,
    "dead_after": _positive,
    "block_interval": _positive,
    "block_max_txs": _at_least(1),
    "max_model_mb": _at_least(1),
    "model_store_mb": _at_least(1),
    "round_timeout": lambda v: None if 0 < v <= 86_400 else "between 0 and 86400 seconds",
    "round_attempts": lambda v: None if 1 <= v <= 100 else "between 1 and 100",
    "ledger_outage_s": lambda v: None if 0 < v <= 7 * 86_400 else "between 0 and a week (604800 s)",
    "torch_threads": _at_least(0),
    "edge_parallelism": _at_least(0),
    "cert_days": lambda v: None if 1 <= v <= 3650 else "between 1 and 3650 days",
    "streams_per_peer": _at_least(1),
    "max_samples": lambda v: None if 1 <= v < 2**31 else "between 1 and 2**31 - 1",
    "stream_idle_s": _positive,
}

_CHOICE_KEYS = {"dataset", "strategy", "aggregation", "model", "partition", "device", "dp", "dp_clipping", "scores",
                "split_labels", "lora_variant"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the type of ``my_conf[key]``; strings are parsed (env, CLI)."""
    expected = type(my_conf[key])
    problem = f"{key} from {source}: expected {expected.__name__}, got {value!r}"
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(problem + " (use true/false)")
    if isinstance(value, bool):  # bool is an int subclass; never accept it as a number
        raise ConfigError(problem)
    if expected in (int, float):
        if isinstance(value, str):
            try:
                number = expected(value.strip())
            except ValueError:
                raise ConfigError(problem) from None
        elif isinstance(value, int) or (expected is float and isinstance(value, float)):
            number = expected(value)
        else:
            raise ConfigError(problem)
        if not math.isfinite(number):
            raise ConfigError(f"{key} from {source}: {value!r} is not a finite number")
        return number
    if not isinstance(value, str):
        raise ConfigError(problem)
    return value


def _apply(conf: dict[str, Any], items: Iterable[tuple[str, Any]], source: str,
           given: dict[str, str] | None = None) -> None:
    for key, value in items:
        if key not in my_conf:
            raise ConfigError(
                f"unknown configuration key {key!r} from {source}; known keys: {', '.join(my_conf)}"
            )
        value = _coerce(key, value, source)
        if key in _CHOICE_KEYS:
            value = value.strip().lower()
        rule = _RULES.get(key)
        if rule is not None and (want := rule(value)) is not None:
            raise ConfigError(f"{key} from {source}: {value!r} is out of range, expected {want}")
        conf[key] = value
        if given is not None:
            given[key] = source


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in my_conf:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "_")


_ENV_KEYS = {_env_name(key): key for key in my_conf}


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings (the ``--set`` flag) into a dict of raw strings."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a validated copy of ``my_conf`` with file, environment and flag overrides applied."""
    conf = dict(my_conf)
    given: dict[str, str] = {}  # key -> where it was set explicitly
    if path is not None:
        file = Path(path)
        try:
            table = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        _apply(conf, _flatten(table), f"config file {file}", given)
    env = os.environ if env is None else env
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in _ENV_KEYS:
            raise ConfigError(
                f"unknown environment variable {name}; known: {', '.join(sorted(_ENV_KEYS))}"
            )
        _apply(conf, [(_ENV_KEYS[name], value)], f"environment variable {name}", given)
    if overrides:
        _apply(conf, overrides.items(), "command line", given)
    _check_rule_options(conf, given)
    if conf["model"] == "auto" and DATASET_ALIASES.get(conf["dataset"], conf["dataset"]) in TEXT_DATASETS:
        conf["model"] = "lora"  # (auto: the model for the dataset; for text, the language model)
    _check_owned_options(conf, given)
    problem = combination_problem(conf)
    if problem is not None:
        raise ConfigError(problem)
    return conf


def combination_problem(conf: Mapping[str, Any]) -> str | None:
    """Why settings that are each valid cannot go together in one job, or None."""
    strategy = conf["strategy"]
    dataset = DATASET_ALIASES.get(conf["dataset"], conf["dataset"])
    if (conf["model"] == "lora") != (dataset in TEXT_DATASETS):
        return (f"model=lora fine-tunes a language model on text (dataset {' or '.join(TEXT_DATASETS)}); "
                f"model={conf['model']} with dataset={conf['dataset']} does not fit")
    if dataset in TEXT_DATASETS and conf["partition"] == "pfllib":
        return "partition=pfllib reads a PFLlib image split; text is dealt by family (iid, pathological, dirichlet)"
    if dataset == "stdlib" and conf["own_data"]:
        return ("dataset=stdlib is one corpus every node holds; for each edge node's own text use dataset=text "
                "(the *.jsonl and *.txt files of its data_dir)")
    if conf["model"] == "lora":
        if strategy not in ("fedavg", "fedper", "local"):
            return (f"model=lora shares LoRA adapters: strategy fedavg (all of them), fedper (the last head_layers "
                    f"blocks' adapters kept) or local; not {strategy}")
        if conf["dp"] != "off" or conf["scores"] in ("loo", "gtg"):
            return "model=lora takes no dp and no marginal scores (scores=flb works)"
    if conf["dp"] != "off" and conf["scores"] in ("loo", "gtg"):
        return (f"scores={conf['scores']} evaluates aggregates of subsets of the clean updates, which a DP job's "
                f"budget does not cover; use scores=flb with dp={conf['dp']}")
    if "," in conf["model"] and strategy not in ("distill", "local"):
        return (f"model={conf['model']}: several architectures in one job need strategy=distill (only outputs "
                f"travel) or local; strategy={strategy} averages parameters, which must have one shape")
    if strategy in ("distill", "split", "splitfed"):
        if conf["proximal_mu"] > 0:
            return (f"proximal_mu pulls shared parameters towards the global ones; strategy={strategy} trains "
                    f"{'towards outputs' if strategy == 'distill' else 'through a cut'}: set proximal_mu=0")
        if conf["dp"] != "off":
            return f"dp={conf['dp']} is analysed for shared parameters; strategy={strategy} shares other things"
        if conf["scores"] in ("loo", "gtg"):
            return f"scores={conf['scores']} scores aggregate models; with strategy={strategy} use scores=flb"
    if strategy == "distill":
        if conf["aggregation"] in ("fedavgm", "fedadam"):
            return (f"aggregation={conf['aggregation']} steps a model with the clients' mean; a distillation "
                    f"consensus is the mean (or a robust statistic) of their outputs: use mean, median, "
                    f"trimmed_mean or krum")
        if conf["partition"] == "pfllib":
            return "strategy=distill holds a public set out of the dataset; a PFLlib split has none (partition=pfllib)"
        if conf["own_data"]:
            return "strategy=distill needs the job's public set, which own-data edge nodes do not share"
        if conf["update_norm_bound"] > 0:
            return ("update_norm_bound bounds an update by the global model's norm; a distillation job's first "
                    "consensus is all zeros")
    return None


# keys that mean something only with one choice of another key: (that key, the values it must take)
OWNED_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{key: ("strategy", ("distill",)) for key in ("distill_alpha", "distill_l2", "distill_public")},
    **{key: ("strategy", ("split", "splitfed")) for key in ("split_layers", "split_labels")},
    **{key: ("model", ("lora",)) for key in ("lora_rank", "lora_alpha", "lora_variant", "block_size", "text_blocks")},
}


def owner_problem(key: str, conf: Mapping[str, Any]) -> str | None:
    """Why ``key`` does nothing with ``conf``'s choices (``split_layers`` without split learning),
    or None. ``conf`` as ``load_config`` makes it (``model=auto`` for text already ``lora``)."""
    if key not in OWNED_OPTIONS:
        return None
    owner, values = OWNED_OPTIONS[key]
    return None if conf[owner] in values else f"{key} applies to {owner}={' | '.join(values)}, not {conf[owner]!r}"


def _check_owned_options(conf: Mapping[str, Any], given: Mapping[str, str]) -> None:
    """A key set explicitly for a choice the job does not make is a mistake: say so."""
    for key in sorted(given):
        problem = owner_problem(key, conf)
        if problem is not None:
            raise ConfigError(f"{problem} ({key} from {given[key]})")


def _check_rule_options(conf: Mapping[str, Any], given: Mapping[str, str]) -> None:
    """An aggregation option set explicitly for a rule the job does not use is a mistake
    (``krum_f`` with ``aggregation=median``): say so instead of ignoring it."""
    options = [key for key in given if key in OPTION_RULES]
    try:
        check_options(conf["aggregation"], options)
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0]
        raise ConfigError(f"{exc} ({key} from {given.get(key, 'the configuration')})") from None

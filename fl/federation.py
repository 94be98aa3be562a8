"""One client's part of a federated round, the same in the simulation and on an edge node.

A client holds its data and its *personal* tensors (the keys its strategy does not share:
the head for FedPer, nothing for FedAvg, everything for Local). A round loads the global
shared tensors plus the personal ones into a working model, trains, and returns the shared
part as the update while keeping the personal part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from fl.datasets import Dataset, load_dataset
from fl.models import SplitModel, StateDict, build_model
from fl.partition import ClientIndices, client_split, partition
from fl.names import DP_OPTIONS, INPUT_SHAPES, OPTION_DEFAULTS
from fl.strategy import Strategy, TrainHook, strategy_for_job
from fl.train import ClientData, EvalResult, TrainStats, evaluate, train_local


@dataclass(frozen=True)
class JobSpec:
    """What every participant must agree on to train the same job (taken from a config)."""

    dataset: str
    model: str
    strategy: str
    num_clients: int
    rounds: int
    local_epochs: int
    lr: float
    batch_size: int
    momentum: float
    partition: str
    classes_per_client: int
    dirichlet_alpha: float
    train_fraction: float
    head_layers: int
    seed: int
    # how updates are combined, and the options of the rules and of the client hook (FedProx);
    # every field is plain (str, int, float) so that node/roles/jobs.py can record it as it is
    aggregation: str = "mean"
    proximal_mu: float = OPTION_DEFAULTS["proximal_mu"]
    update_norm_bound: float = OPTION_DEFAULTS["update_norm_bound"]
    update_norm_clip: int = OPTION_DEFAULTS["update_norm_clip"]
    server_lr: float = OPTION_DEFAULTS["server_lr"]
    server_momentum: float = OPTION_DEFAULTS["server_momentum"]
    adam_lr: float = OPTION_DEFAULTS["adam_lr"]
    adam_beta1: float = OPTION_DEFAULTS["adam_beta1"]
    adam_beta2: float = OPTION_DEFAULTS["adam_beta2"]
    adam_tau: float = OPTION_DEFAULTS["adam_tau"]
    trim_beta: float = OPTION_DEFAULTS["trim_beta"]
    krum_f: int = OPTION_DEFAULTS["krum_f"]
    krum_m: int = OPTION_DEFAULTS["krum_m"]
    # differential privacy (fl/privacy.py): the mechanism and its settings
    dp: str = "off"
    dp_clip: float = DP_OPTIONS["dp_clip"]
    dp_noise: float = DP_OPTIONS["dp_noise"]
    dp_epsilon: float = DP_OPTIONS["dp_epsilon"]
    dp_delta: float = DP_OPTIONS["dp_delta"]
    dp_clipping: str = "fixed"
    dp_target_quantile: float = DP_OPTIONS["dp_target_quantile"]
    dp_clip_lr: float = DP_OPTIONS["dp_clip_lr"]
    dp_count_noise: float = DP_OPTIONS["dp_count_noise"]

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> "JobSpec":
        from fl.datasets import canonical_name

        return cls(
            dataset=canonical_name(conf["dataset"]),
            model=conf["model"],
            strategy=conf["strategy"],
            num_clients=conf["client.amount"],
            rounds=conf["gobal_epoch"],
            local_epochs=conf["local_epoch"],
            lr=conf["learn_rate"],
            batch_size=conf["BATCH_SIZE"],
            momentum=conf["momentum"],
            partition=conf["partition"],
            classes_per_client=conf["classes_per_client"],
            dirichlet_alpha=conf["dirichlet_alpha"],
            train_fraction=conf["train_fraction"],
            head_layers=conf["head_layers"],
            seed=conf["seed"],
            aggregation=conf.get("aggregation", "mean"),
            **{key: type(default)(conf.get(key, default)) for key, default in OPTION_DEFAULTS.items()},
            dp=conf.get("dp", "off"),
            dp_clipping=conf.get("dp_clipping", "fixed"),
            **{key: float(conf.get(key, default)) for key, default in DP_OPTIONS.items()},
        )

    def build_model(self, num_classes: int = 10) -> SplitModel:
        """The job's model, initialised from the job's seed (identical on every node)."""
        torch.manual_seed(self.seed)
        return build_model(self.model, self.dataset, num_classes, self.head_layers)

    def check_model_fits(self) -> None:
        """Raise ValueError unless the job's model accepts its dataset's samples (one zero sample
        of the dataset's input shape, so no data is needed): checked before a job starts."""
        shape = INPUT_SHAPES.get(self.dataset)
        if shape is None:
            return
        model = self.build_model()
        try:
            with torch.no_grad():
                model.eval()
                model(torch.zeros(1, *shape))
        except RuntimeError as exc:
            raise ValueError(f"model {self.model!r} does not accept {self.dataset} samples of shape {shape}: "
                             f"{str(exc).splitlines()[0]}") from None

    def get_strategy(self, min_samples: int = 0) -> Strategy:
        """The job's strategy (sharing, aggregation rule and its options; DP around it when set).
        ``min_samples``: the fewest training samples of a client (accounts DP-SGD)."""
        return strategy_for_job(self, min_samples)

    def round_seed(self, round_number: int, client: int) -> int:
        """A distinct, reproducible seed for one client's training in one round."""
        return int(np.random.SeedSequence([self.seed, round_number, client]).generate_state(1)[0])


def job_data(job: JobSpec, data_dir: str | Path) -> tuple[Dataset, list[ClientIndices]]:
    """The job's samples and every client's train/test indices into them: the job's own
    partition of ``dataset`` (from its seed), or, with ``partition = "pfllib"``, the split PFLlib
    wrote into ``data_dir`` (its config.json, train/ and test/), so results compare with PFLlib's
    on identical data. The simulation and every edge node call this, so both agree."""
    if job.partition == "pfllib":
        from fl.pfllib import load_pfllib

        dataset, splits = load_pfllib(data_dir, family=job.dataset)
        if len(splits) != job.num_clients:
            raise ValueError(f"the PFLlib split in {data_dir} has {len(splits)} clients, the job {job.num_clients}; "
                             f"set clients={len(splits)}")
        return dataset, splits
    dataset = load_dataset(job.dataset, data_dir)
    return dataset, client_indices(dataset.y.numpy(), job)


def client_indices(labels: np.ndarray, job: JobSpec) -> list[ClientIndices]:
    """Every client's train/test indices, derived from the job's seed alone."""
    parts = partition(
        labels, job.num_clients, job.partition, job.seed, job.classes_per_client, job.dirichlet_alpha
    )
    splits = [client_split(p, job.train_fraction, job.seed, i) for i, p in enumerate(parts)]
    for i, split in enumerate(splits):
        if len(split.train) == 0 or len(split.test) == 0:
            raise ValueError(
                f"client {i} got {len(split.train)} training and {len(split.test)} test samples "
                f"from the {job.partition} partition; use fewer clients or another partition"
            )
    return splits


def client_data(dataset: Dataset, split: ClientIndices, device: torch.device) -> ClientData:
    """Copy one client's samples to ``device`` once, so training only slices tensors."""
    train = torch.from_numpy(split.train)
    test = torch.from_numpy(split.test)
    return ClientData(
        x_train=_channels_last(dataset.x[train].to(device)),
        y_train=dataset.y[train].to(device),
        x_test=_channels_last(dataset.x[test].to(device)),
        y_test=dataset.y[test].to(device),
    )


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images in NHWC order: convolutions run about a quarter faster that way on these CPUs."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass
class ClientResult:
    """What one client's round returns: its shared update and its kept personal state."""

    client: int
    shared: StateDict
    personal: StateDict
    stats: TrainStats
    local_eval: EvalResult | None


class ClientWorker:
    """Runs client rounds with one reusable working model (one per process)."""

    def __init__(self, job: JobSpec, num_classes: int, device: torch.device) -> None:
        self.job = job
        self.device = device
        self.model = job.build_model(num_classes).to(device, memory_format=torch.channels_last)
        self.strategy = job.get_strategy()
        base, head = self.model.base_keys(), self.model.head_keys()
        self.shared_keys = self.strategy.shared_keys(base, head)
        shared = set(self.shared_keys)
        self.personal_keys = [k for k in self.model.state_dict() if k not in shared]

    def load(self, shared: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]) -> None:
        self.model.load_part(shared, self.shared_keys)
        self.model.load_part(personal, self.personal_keys)

    def train_round(
        self,
        client: int,
        data: ClientData,
        round_number: int,
        shared: Mapping[str, torch.Tensor],
        personal: Mapping[str, torch.Tensor],
        local_eval: bool = False,
        config: Mapping[str, str] = MappingProxyType({}),
    ) -> ClientResult:
        """Train one round from ``shared`` + ``personal``. ``config`` is the round's training
        options from ``Strategy.configure_train`` (e.g. FedProx's ``proximal_mu``); an unknown key
        is a ValueError."""
        hook = TrainHook.from_config(config)
        self.load(shared, personal)
        job = self.job
        stats = train_local(
            self.model,
            data.x_train,
            data.y_train,
            epochs=job.local_epochs,
            lr=job.lr,
            batch_size=job.batch_size,
            momentum=job.momentum,
            seed=job.round_seed(round_number, client),
            hook=hook,
            shared_keys=self.shared_keys,
        )
        state = self.model.full_state()
        return ClientResult(
            client=client,
            shared=hook.finish({k: state[k] for k in self.shared_keys}, shared),  # (clipped, noised: DP)
            personal={k: state[k] for k in self.personal_keys},
            stats=stats,
            local_eval=evaluate(self.model, data.x_test, data.y_test) if local_eval else None,
        )

    def evaluate(
        self, data: ClientData, shared: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]
    ) -> EvalResult:
        self.load(shared, personal)
        return evaluate(self.model, data.x_test, data.y_test)


def split_state(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> StateDict:
    return {k: state[k] for k in keys}

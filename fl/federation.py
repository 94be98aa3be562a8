"""One client's part of a federated round, the same in the simulation and on an edge node.

A client holds its data and its *personal* tensors (the keys its strategy does not share:
the head for FedPer, nothing for FedAvg, everything for Local). A round loads the global
shared tensors plus the personal ones into a working model, trains, and returns the shared
part as the update while keeping the personal part.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from fl.datasets import Dataset, load_dataset
from fl.models import SplitModel, StateDict, build_model
from fl.partition import ClientIndices, client_split, partition
from fl.distill import PUBLIC_LOGITS, DistillTerm, public_indices, public_outputs
from fl.names import DISTILL_PUBLIC, DP_OPTIONS, INPUT_SHAPES, OPTION_DEFAULTS, SPLIT_STRATEGIES, TEXT_DATASETS
from fl.split import Cut, LocalLink, ServerHalf, ServerLink, train_split
from fl.strategy import Strategy, TrainHook, strategy_for_job
from fl.train import GLOBAL_RNG, ClientData, EvalResult, TrainStats, evaluate, seed_global, train_local


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
    distill_alpha: float = OPTION_DEFAULTS["distill_alpha"]
    distill_l2: int = OPTION_DEFAULTS["distill_l2"]
    distill_public: int = DISTILL_PUBLIC  # distillation: samples held out as the public set
    split_layers: int = 1  # split learning: layers below the cut, on the edge node
    split_labels: str = "server"  # split learning: labels at the supernode, or "edge" (U-shaped)
    # model=lora (fl/lm/): the adapters, the text's sequence length, and the base model every node
    # must hold (the SHA-256 of its weights, pinned by the entry node; "" in the simulation)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_variant: str = "fedavg"
    block_size: int = 128
    text_blocks: int = 0  # at most this many blocks of each family of text (0: all)
    base_model: str = ""
    lora_init: str = ""  # the SHA-256 of the adapters every client starts with and keeps (FFA's frozen A)
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
            distill_public=int(conf.get("distill_public", DISTILL_PUBLIC)),
            split_layers=int(conf.get("split_layers", 1)),
            split_labels=conf.get("split_labels", "server"),
            lora_rank=int(conf.get("lora_rank", 8)),
            lora_alpha=float(conf.get("lora_alpha", 16.0)),
            lora_variant=conf.get("lora_variant", "fedavg"),
            block_size=int(conf.get("block_size", 128)),
            text_blocks=int(conf.get("text_blocks", 0)),
            **{key: float(conf.get(key, default)) for key, default in DP_OPTIONS.items()},
        )

    @property
    def architectures(self) -> list[str]:
        """The job's model names: one, or (distillation) several, given to the clients in turn."""
        return self.model.split(",")

    def architecture(self, client: int) -> str:
        """The model client ``client`` trains: the job's architectures in turn."""
        names = self.architectures
        return names[client % len(names)]

    def build_model(self, num_classes: int = 10, client: int = 0) -> SplitModel:
        """Client ``client``'s model, initialised from the job's seed (identical on every node)."""
        with GLOBAL_RNG:
            seed_global(self.seed)
            return build_model(self.architecture(client), self.dataset, num_classes, self.head_layers)

    def check_model_fits(self, input_shape: tuple[int, ...] | None = None) -> None:
        """Raise ValueError unless each of the job's models accepts its dataset's samples (one zero
        sample of ``input_shape``, by default the dataset's usual one, so no data is needed):
        checked before a job starts."""
        shape = input_shape or INPUT_SHAPES.get(self.dataset)
        if shape is None:
            return
        for client, name in enumerate(self.architectures):
            model = self.build_model(client=client)
            try:
                with torch.no_grad():
                    model.eval()
                    model(torch.zeros(1, *shape))
            except RuntimeError as exc:
                raise ValueError(f"model {name!r} does not accept {self.dataset} samples of shape {shape}: "
                                 f"{str(exc).splitlines()[0]}") from None

    def get_strategy(self, min_samples: int = 0) -> Strategy:
        """The job's strategy (sharing, aggregation rule and its options; DP around it when set).
        ``min_samples``: the fewest training samples of a client (accounts DP-SGD)."""
        return strategy_for_job(self, min_samples)

    def round_seed(self, round_number: int, client: int) -> int:
        """A distinct, reproducible seed for one client's training in one round."""
        return int(np.random.SeedSequence([self.seed, round_number, client]).generate_state(1)[0])


def make_worker(job: JobSpec, num_classes: int, device: torch.device, model_path: str | Path = "") -> ClientWorker:
    """The job's client worker: :class:`ClientWorker`, or for ``model=lora`` the LoRA fine-tuning
    worker (``fl.lm.worker.LMWorker``, the same surface) on the base model at ``model_path``."""
    if job.model != "lora":
        return ClientWorker(job, num_classes, device)
    from fl.lm.worker import LMWorker, LoRASpec

    return LMWorker(job, _model_path(model_path), LoRASpec(job.lora_rank, job.lora_alpha, variant=job.lora_variant),
                    device)


def warm_up(device: torch.device) -> None:
    """Run a client's round and evaluation once on a tiny job of random digits-shaped samples.

    The first round in a process is slow for reasons that have nothing to do with its job: torch
    initialises operators, autograd and the optimiser on first use (~0.8 s), and Python specialises
    this code as it first runs it. An edge node does that here, before its first round; a process
    that forks edge nodes (``--fork``) does it once for all of them, which then share the result.
    Once per process (and per device)."""
    if device in _WARMED:
        return
    job = JobSpec(dataset="digits", model="auto", strategy="fedper", num_clients=2, rounds=1, local_epochs=1,
                  lr=0.01, batch_size=8, momentum=0.0, partition="iid", classes_per_client=2, dirichlet_alpha=0.5,
                  train_fraction=0.75, head_layers=1, seed=0)
    samples = torch.Generator().manual_seed(0)
    dataset = Dataset(name="digits", x=torch.randn(32, *INPUT_SHAPES["digits"], generator=samples),
                      y=torch.arange(32) % 10, num_classes=10)
    worker = make_worker(job, 10, device)
    data = client_data(dataset, client_indices(dataset.y.numpy(), job)[0], device)
    shared = split_state(worker.model.full_state(), worker.shared_keys)
    result = worker.train_round(0, data, 1, shared, worker.initial_personal(0))
    worker.evaluate(0, data, shared, result.personal)
    _WARMED.add(device)


_WARMED: set[torch.device] = set()


def warmed_up(device: torch.device) -> bool:
    """Whether this process has run ``warm_up`` for ``device`` (a forked child inherits it)."""
    return device in _WARMED


def _model_path(model_path: str | Path) -> Path:
    if not str(model_path):
        raise ValueError("model=lora fine-tunes the base model at model_path (--model-path): point it at a local "
                         "folder holding a causal language model (python -m fl.lm.pretrain makes a tiny one)")
    return Path(model_path)


def job_data(job: JobSpec, data_dir: str | Path, model_path: str | Path = "") -> tuple[Dataset, list[ClientIndices]]:
    """The job's samples and every client's train/test indices into them: the job's own
    partition of ``dataset`` (from its seed), or, with ``partition = "pfllib"``, the split PFLlib
    wrote into ``data_dir`` (its config.json, train/ and test/), so results compare with PFLlib's
    on identical data. The simulation and every edge node call this, so both agree."""
    if job.dataset in TEXT_DATASETS:  # token blocks, labelled by family (a group of modules, a file)
        dataset = own_dataset(job, data_dir, model_path)
        return dataset, client_indices(dataset.y.numpy(), job)
    if job.partition == "pfllib":
        from fl.pfllib import load_pfllib

        dataset, splits = load_pfllib(data_dir, family=job.dataset)
        if len(splits) != job.num_clients:
            raise ValueError(f"the PFLlib split in {data_dir} has {len(splits)} clients, the job {job.num_clients}; "
                             f"set clients={len(splits)}")
        return dataset, splits
    dataset = load_dataset(job.dataset, data_dir)
    return dataset, client_indices(dataset.y.numpy(), job)


def own_dataset(job: JobSpec, data_dir: str | Path, model_path: str | Path = "") -> Dataset:
    """Everything in a node's own ``data_dir`` (an own-data job): the job's dataset's files, or
    for a language model the text files there."""
    if job.dataset in TEXT_DATASETS:
        from fl.lm.data import job_text_dataset

        return job_text_dataset(job.dataset, _model_path(model_path), data_dir, job.block_size, job.text_blocks)
    return load_dataset(job.dataset, data_dir)


def client_indices(labels: np.ndarray, job: JobSpec) -> list[ClientIndices]:
    """Every client's train/test indices, derived from the job's seed alone (a distillation job's
    public set first held out of the pool the clients are drawn from)."""
    pool = np.arange(len(labels))
    public = np.empty(0, dtype=np.int64)
    if job.strategy == "distill":
        public = public_indices(len(labels), job.distill_public, job.seed)
        pool = np.setdiff1d(pool, public)
    parts = partition(
        labels[pool], job.num_clients, job.partition, job.seed, job.classes_per_client, job.dirichlet_alpha
    )
    splits = [replace(client_split(pool[p], job.train_fraction, job.seed, i), public=public)
              for i, p in enumerate(parts)]
    for i, split in enumerate(splits):  # (a client with one sample trains on it and has none to test on:
        if len(split.train) == 0:        # its evaluation counts in the weighted accuracy with weight 0)
            raise ValueError(f"client {i} got no training samples from the {job.partition} partition; use fewer "
                             f"clients or another partition")
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
        x_public=_channels_last(dataset.x[torch.from_numpy(split.public)].to(device)) if len(split.public) else None,
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
    """Runs client rounds with one reusable working model per architecture (one worker per process).

    ``shared_keys``/``personal_keys`` name what travels and what each client keeps, for the first
    client's architecture; in a distillation job every client keeps its whole model (architectures
    may differ) and shares only ``public_logits``; in a split job the update is the upper layers
    the client trained through its server half (``fl.split``), and with splitfed its lower ones."""

    def __init__(self, job: JobSpec, num_classes: int, device: torch.device) -> None:
        self.job = job
        self.device = device
        self.num_classes = num_classes
        self.strategy = job.get_strategy()
        self._models: dict[str, tuple[SplitModel, list[str], list[str]]] = {}  # architecture -> model, keys
        self.model = self.model_for(0)
        self.cut = self.split_cut(self.model) if job.strategy in SPLIT_STRATEGIES else None
        self._server_model: SplitModel | None = None  # the simulation's server half (split jobs)
        self.shared_keys, self.personal_keys = self._keys(0)

    def split_cut(self, model: SplitModel) -> Cut:
        """Where this split job cuts ``model`` (ValueError when the cut leaves a side empty)."""
        job = self.job
        return Cut.of(model, job.split_layers, job.split_labels == "edge", job.head_layers)

    def server_half(self, shared: Mapping[str, torch.Tensor], model: SplitModel | None = None) -> ServerHalf:
        """A server half for one client's split round, from the round's global ``shared`` state,
        on ``model`` (a supernode's own working model), else on this worker's second model."""
        if model is None:
            if self._server_model is None:
                self._server_model = self.job.build_model(self.num_classes).to(self.device)
            model = self._server_model
        assert self.cut is not None, "not a split job"
        return ServerHalf(model, self.cut, dict(shared), self.job.lr, self.job.momentum)

    @property
    def distills(self) -> bool:
        return self.job.strategy == "distill"

    def model_for(self, client: int) -> SplitModel:
        """The working model of ``client``'s architecture (built once, reused every round)."""
        return self._built(client)[0]

    def _keys(self, client: int) -> tuple[list[str], list[str]]:
        """(shared, personal) keys of ``client``'s architecture."""
        _, shared, personal = self._built(client)
        return shared, personal

    def _built(self, client: int) -> tuple[SplitModel, list[str], list[str]]:
        name = self.job.architecture(client)
        if name not in self._models:
            model = self.job.build_model(self.num_classes, client).to(self.device, memory_format=torch.channels_last)
            keys = list(model.state_dict())
            if self.distills:
                shared = [PUBLIC_LOGITS]
            elif self.job.strategy in SPLIT_STRATEGIES:
                shared = self.split_cut(model).shared_keys(model, self.job.strategy == "splitfed")
            else:
                shared = self.strategy.shared_keys(model.base_keys(), model.head_keys())
            self._models[name] = (model, shared, [k for k in keys if k not in set(shared)])
        return self._models[name]

    @functools.cached_property
    def split_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A split job's per-sample shapes at the cut: the activations, and what the supernode
        sends back to a U-shaped edge node (``Cut.shapes``)."""
        assert self.cut is not None, "not a split job"
        return self.cut.shapes(self.model, INPUT_SHAPES[self.job.dataset])

    def initial_shared(self) -> StateDict:
        """The job's first global shared state (built from the job's seed alone); a distillation
        job's first consensus is all zeros."""
        if self.distills:
            return {PUBLIC_LOGITS: torch.zeros(self.job.distill_public, self.num_classes)}
        return split_state(self.model.full_state(), self.shared_keys)

    def initial_personal(self, client: int) -> StateDict:
        """What ``client`` keeps before its first round (its whole model when distilling)."""
        return split_state(self.model_for(client).full_state(), self._keys(client)[1])

    def load(self, client: int, shared: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]) -> SplitModel:
        """``client``'s working model holding ``shared`` + ``personal``."""
        model = self.model_for(client)
        shared_keys, personal_keys = self._keys(client)
        if not self.distills:
            model.load_part(shared, shared_keys)
        model.load_part(personal, personal_keys)
        return model

    def train_round(
        self,
        client: int,
        data: ClientData,
        round_number: int,
        shared: Mapping[str, torch.Tensor],
        personal: Mapping[str, torch.Tensor],
        local_eval: bool = False,
        config: Mapping[str, str] = MappingProxyType({}),
        link: ServerLink | None = None,
    ) -> ClientResult:
        """Train one round from ``shared`` + ``personal``. ``config`` is the round's training
        options from ``Strategy.configure_train`` (e.g. FedProx's ``proximal_mu``); an unknown key
        is a ValueError. ``link``: a split job's server half (on the network, the stream to the
        supernode; by default one in this process)."""
        hook = TrainHook.from_config(config)
        model = self.load(client, shared, personal)
        shared_keys, personal_keys = self._keys(client)
        job = self.job
        seed = job.round_seed(round_number, client)
        if self.cut is not None:
            return self._train_split(client, data, model, shared, link or LocalLink(self.server_half(shared)),
                                     seed, hook, local_eval)
        stats = train_local(
            model,
            data.x_train,
            data.y_train,
            epochs=job.local_epochs,
            lr=job.lr,
            batch_size=job.batch_size,
            momentum=job.momentum,
            seed=seed,
            hook=hook,
            shared_keys=shared_keys,
            regularizer=self._distill_term(data, shared, hook, seed),
        )
        state = model.full_state()
        if self.distills:
            update = {PUBLIC_LOGITS: public_outputs(model, self._public(data))}
        else:
            update = hook.finish({k: state[k] for k in shared_keys}, shared)  # (clipped, noised: DP)
        return ClientResult(
            client=client,
            shared=update,
            personal={k: state[k] for k in personal_keys},
            stats=stats,
            local_eval=evaluate(model, data.x_test, data.y_test) if local_eval else None,
        )

    def _train_split(self, client: int, data: ClientData, model: SplitModel, shared: Mapping[str, torch.Tensor],
                     link: ServerLink, seed: int, hook: TrainHook, local_eval: bool) -> ClientResult:
        if hook != TrainHook():
            raise ValueError(f"split learning takes no client training options, got {hook}")
        assert self.cut is not None
        job = self.job
        stats, upper = train_split(model, self.cut, link, data.x_train, data.y_train, epochs=job.local_epochs,
                                   lr=job.lr, batch_size=job.batch_size, momentum=job.momentum, seed=seed)
        state = model.full_state()
        shared_keys, personal_keys = self._keys(client)
        server = set(self.cut.server_keys(model))  # the upper layers, as the server half trained them
        update = {k: upper[k] if k in server else state[k] for k in shared_keys}
        model.load_part(update, shared_keys)  # (the trained whole model, for a local evaluation)
        return ClientResult(client=client, shared=update, personal={k: state[k] for k in personal_keys},
                            stats=stats, local_eval=evaluate(model, data.x_test, data.y_test) if local_eval else None)

    def _distill_term(self, data: ClientData, shared: Mapping[str, torch.Tensor], hook: TrainHook,
                      seed: int) -> DistillTerm | None:
        if not self.distills or hook.distill_alpha <= 0:
            return None
        return DistillTerm(self._public(data), shared[PUBLIC_LOGITS], hook.distill_alpha, hook.distill_l2 == 1,
                           self.job.batch_size, seed + 1)

    def _public(self, data: ClientData) -> torch.Tensor:
        if data.x_public is None:
            raise ValueError("a distillation job needs the job's public set; this client's data holds none")
        return data.x_public

    def evaluate(self, client: int, data: ClientData, shared: Mapping[str, torch.Tensor],
                 personal: Mapping[str, torch.Tensor]) -> EvalResult:
        return evaluate(self.load(client, shared, personal), data.x_test, data.y_test)


def split_state(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> StateDict:
    return {k: state[k] for k in keys}

"""A client worker that fine-tunes LoRA adapters of a frozen causal LM: a drop-in for
``fl.federation.ClientWorker``, so the simulation and edge nodes run it unchanged.

Only the adapters travel and are averaged; the base model stays on every node, bit for bit as
downloaded (``fl.lm.base.base_model_hash`` pins it). Two variants (:class:`LoRASpec`):

- ``fedavg``: every node trains A and B of each adapter and both are averaged. The average of
  the products B·A is not the product of the averages, so the aggregate is only an approximation
  of averaging the updates ΔW = B·A.
- ``ffa`` (FFA-LoRA, Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated
  Learning"): A stays at its initialisation, drawn from the job's seed and so identical on every
  node, and only B is trained and shared. Then mean(Bᵢ)·A = mean(Bᵢ·A): averaging B is exactly
  averaging the updates, with half the traffic.

The job's sharing choice applies on top: ``fedavg`` shares those adapters, ``local`` none, and
``fedper`` keeps the adapters of the last ``head_layers`` decoder blocks personal (FedPer's head,
in adapter form). Keys are those of ``peft.get_peft_model_state_dict`` (no adapter name), so a
global adapter can be saved and loaded as an ordinary PEFT adapter.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model

from fl.federation import ClientResult, JobSpec
from fl.lm.base import load_model
from fl.models import StateDict
from fl.strategy import TrainHook
from fl.train import GLOBAL_RNG, ClientData, EvalResult, TrainStats, seed_global

VARIANTS = ("fedavg", "ffa")
_ADAPTER = "default"  # peft's adapter name, dropped from the keys that travel
_ADAPTER_NAME = re.compile(rf"\.(lora_[AB])\.{_ADAPTER}\.")
_BLOCK = re.compile(r"\.(\d+)\.")  # the decoder block a key belongs to (model.layers.3. / transformer.h.3.)
EVAL_LOGITS = 1 << 24  # the most logits one evaluation batch holds (64 MiB of float32)


@dataclass(frozen=True)
class LoRASpec:
    """The adapters every node of a job adds to the base model.

    ``target_modules`` defaults to ``"all-linear"``: every linear layer of the decoder blocks
    (attention q/k/v/o and the MLP), the output head excluded. Adapting the MLP as well as
    attention is what lets LoRA match full fine-tuning (QLoRA, Dettmers et al. 2023), it needs no
    per-architecture module names (Llama, GPT-2, SmolLM2 alike), and it costs little: rank 8 on
    SmolLM2-135M is 2.4 M parameters, 1.8 % of the model (FFA-LoRA sends half: 1.2 M)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    variant: str = "fedavg"
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown LoRA variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA needs rank ≥ 1, alpha > 0 and dropout in [0, 1); got {self}")

    def config(self) -> LoraConfig:
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


class LoRAModel:
    """The PEFT model with its adapter parameters under stable names: what the engine reads as
    ``worker.model`` (``full_state``, ``load_part``) and FedProx's hook reads (``named_parameters``)."""

    def __init__(self, peft: PeftModel) -> None:
        self.peft = peft
        self.adapters: dict[str, torch.nn.Parameter] = {
            _ADAPTER_NAME.sub(r".\1.", name): param for name, param in peft.named_parameters() if "lora_" in name
        }
        if not self.adapters:
            raise ValueError("the LoRA target modules matched no layer of the model")

    def keys(self) -> list[str]:
        return list(self.adapters)

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.adapters.items())

    def full_state(self) -> StateDict:
        """Detached contiguous CPU copies of the adapter weights (only), in model order."""
        return {key: param.detach().to("cpu", copy=True).contiguous() for key, param in self.adapters.items()}

    def load_part(self, state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> None:
        """Copy exactly ``keys`` from ``state`` into the adapters (shape-checked)."""
        missing = [key for key in keys if key not in state]
        if missing:
            raise KeyError(f"state lacks {missing}")
        with torch.no_grad():
            for key in keys:
                param = self.adapters[key]
                if state[key].shape != param.shape:
                    raise ValueError(f"{key}: shape {tuple(state[key].shape)}, the model has {tuple(param.shape)}")
                param.copy_(state[key])


class LMWorker:
    """Runs client rounds of LoRA fine-tuning on one reusable PEFT model (built once)."""

    def __init__(self, job: JobSpec, model_path: str | Path, lora: LoRASpec, device: torch.device) -> None:
        self.job = job
        self.lora = lora
        self.device = torch.device(device)
        # built on the CPU from the job's seed: the CPU generator gives every node, CPU or CUDA, the
        # same initial adapters (FFA-LoRA relies on an identical A everywhere)
        with GLOBAL_RNG, warnings.catch_warnings():  # peft 0.21 still calls a name transformers 5 deprecates
            base = load_model(model_path, "cpu")
            seed_global(job.seed)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            peft = get_peft_model(base, lora.config())
        # one evaluation batch holds at most EVAL_LOGITS logits (a 49k vocabulary's are large)
        self._vocab_size = int(base.get_output_embeddings().weight.shape[0])
        self.model = LoRAModel(peft.to(self.device))
        if lora.variant == "ffa":
            for key, param in self.model.adapters.items():
                if ".lora_A." in key:
                    param.requires_grad_(False)
        self.strategy = job.get_strategy()
        trainable = [key for key, param in self.model.adapters.items() if param.requires_grad]
        head = set(self._head_keys(trainable))
        self.shared_keys = self.strategy.shared_keys([k for k in trainable if k not in head],
                                                     [k for k in trainable if k in head])
        shared = set(self.shared_keys)
        self.personal_keys = [key for key in self.model.keys() if key not in shared]

    def _head_keys(self, keys: Sequence[str]) -> list[str]:
        """The adapters of the last ``job.head_layers`` decoder blocks (FedPer's head); only
        checked where the job's sharing uses a head."""
        blocks = {key: int(match.group(1)) for key in keys if (match := _BLOCK.search(key))}
        numbers = sorted(set(blocks.values()))
        if self.job.strategy == "fedper" and not 1 <= self.job.head_layers < len(numbers):
            raise ValueError(f"head_layers={self.job.head_layers}: the adapters span {len(numbers)} decoder blocks; "
                             f"the head must leave at least one block shared")
        last = set(numbers[len(numbers) - self.job.head_layers:])
        return [key for key, block in blocks.items() if block in last]

    def initial_shared(self) -> StateDict:
        """The job's first global adapters (from the job's seed, identical on every node)."""
        state = self.model.full_state()
        return {key: state[key] for key in self.shared_keys}

    def initial_personal(self, client: int) -> StateDict:
        """What a client keeps before its first round (the same for every client)."""
        state = self.model.full_state()
        return {key: state[key] for key in self.personal_keys}

    def load(self, client: int, shared: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]) -> LoRAModel:
        """The one model holding ``shared`` + ``personal`` (every client runs the same base model)."""
        self.model.load_part(shared, self.shared_keys)
        self.model.load_part(personal, self.personal_keys)
        return self.model

    def train_round(
        self,
        client: int,
        data: ClientData,
        round_number: int,
        shared: Mapping[str, torch.Tensor],
        personal: Mapping[str, torch.Tensor],
        local_eval: bool = False,
        config: Mapping[str, str] = MappingProxyType({}),
        link: object = None,
    ) -> ClientResult:
        """Train the adapters one round from ``shared`` + ``personal`` on the client's token
        blocks (causal-LM loss). ``config``: the round's training options, parsed as
        ``ClientWorker`` does (FedProx's ``proximal_mu``, local DP's ``dp_clip``/``dp_noise``);
        an unknown key, or DP-SGD, is a ValueError."""
        if link is not None:
            raise ValueError("a language model job is not split between nodes")
        hook = TrainHook.from_config(config)
        if hook.dpsgd:
            raise ValueError("DP-SGD (dpsgd_clip, dpsgd_noise) is not available for LoRA fine-tuning; "
                             "use client-side clipping (dp_clip) or central DP")
        self.load(client, shared, personal)
        stats = self._train(data.x_train, self.job.round_seed(round_number, client), hook)
        state = self.model.full_state()
        return ClientResult(
            client=client,
            shared=hook.finish({k: state[k] for k in self.shared_keys}, shared),  # (clipped, noised: DP)
            personal={k: state[k] for k in self.personal_keys},
            stats=stats,
            local_eval=self._evaluate(data.x_test) if local_eval else None,
        )

    def _train(self, blocks: torch.Tensor, seed: int, hook: TrainHook) -> TrainStats:
        """``job.local_epochs`` seeded shuffled passes of AdamW over the trainable adapters (a
        fresh optimiser each round: its moments describe the last global model, not this one;
        the job's ``momentum`` is SGD's and unused, and weight decay is 0, so an adapter left
        untouched by the data stays where the aggregate put it)."""
        n = int(blocks.shape[0])
        if n == 0:
            raise ValueError("no training samples")
        job = self.job
        optimizer = torch.optim.AdamW([p for p in self.model.adapters.values() if p.requires_grad],
                                      lr=job.lr, weight_decay=0.0)
        with GLOBAL_RNG:  # LoRA's dropout draws from the global generator throughout
            return self._train_blocks(blocks, optimizer, seed, hook)

    def _train_blocks(self, blocks: torch.Tensor, optimizer: torch.optim.Optimizer, seed: int,
                      hook: TrainHook) -> TrainStats:
        n, job = int(blocks.shape[0]), self.job
        generator = torch.Generator().manual_seed(seed)
        seed_global(seed)  # LoRA dropout
        before_step = hook.start(self.model, self.shared_keys)
        peft = self.model.peft
        peft.train()
        loss_sum = torch.zeros((), device=blocks.device)
        for _ in range(job.local_epochs):
            order = torch.randperm(n, generator=generator).to(blocks.device)
            loss_sum.zero_()
            for start in range(0, n, job.batch_size):
                batch = blocks[order[start : start + job.batch_size]]
                loss = peft(input_ids=batch, labels=batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if before_step is not None:
                    before_step()
                optimizer.step()
                loss_sum += loss.detach() * batch.shape[0]
        peft.eval()
        return TrainStats(num_samples=n, loss=float(loss_sum) / n)

    def evaluate(self, client: int, data: ClientData, shared: Mapping[str, torch.Tensor],
                 personal: Mapping[str, torch.Tensor]) -> EvalResult:
        """Next-token accuracy and summed cross-entropy on the client's test blocks:
        perplexity = exp(loss_sum / num_samples), ``num_samples`` being predicted tokens."""
        self.load(client, shared, personal)
        return self._evaluate(data.x_test)

    @torch.no_grad()
    def _evaluate(self, blocks: torch.Tensor) -> EvalResult:
        peft = self.model.peft
        peft.eval()
        batch_size = max(1, EVAL_LOGITS // (int(blocks.shape[1]) * self._vocab_size))
        correct, loss_sum, count = 0, 0.0, 0
        for start in range(0, int(blocks.shape[0]), batch_size):
            batch = blocks[start : start + batch_size]
            logits = peft(input_ids=batch).logits[:, :-1]
            target = batch[:, 1:]
            loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                              reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += target.numel()
        return EvalResult(correct=correct, loss_sum=loss_sum, num_samples=count)

    def save_adapter(self, out_dir: str | Path, shared: Mapping[str, torch.Tensor],
                     personal: Mapping[str, torch.Tensor]) -> None:
        """Write ``shared`` + ``personal`` as an ordinary PEFT adapter folder
        (``PeftModel.from_pretrained(base, out_dir)`` loads it onto the base model)."""
        self.load(0, shared, personal)
        self.model.peft.save_pretrained(out_dir)

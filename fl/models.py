"""Models split into base layers (shared, aggregated) and head layers (personal, kept local).

FedPer's whole idea is that split, so it is explicit here: every model lists its
parameterised layers in order, and the last ``head_layers`` of them form the head. The
state-dict keys of each part follow from the layer names, so the same split holds on every
node without sending any description of it over the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fl.names import INPUT_SHAPES, MODELS

StateDict = dict[str, torch.Tensor]


class SplitModel(nn.Module):
    """A module whose ordered ``layer_names`` split into base and head."""

    layer_names: tuple[str, ...] = ()

    def __init__(self, head_layers: int | Sequence[str] = 1) -> None:
        super().__init__()
        self._head_spec = head_layers

    @property
    def head_names(self) -> tuple[str, ...]:
        spec = self._head_spec
        if isinstance(spec, int):
            if not 1 <= spec < len(self.layer_names):
                raise ValueError(
                    f"head_layers={spec}: {type(self).__name__} has {len(self.layer_names)} layers "
                    f"({', '.join(self.layer_names)}); the head must leave at least one base layer"
                )
            return self.layer_names[-spec:]
        unknown = [n for n in spec if n not in self.layer_names]
        if unknown or not spec or len(spec) >= len(self.layer_names):
            raise ValueError(
                f"head layers {list(spec)} must be a non-empty proper subset of {list(self.layer_names)}"
            )
        return tuple(spec)

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Layer ``name`` and what follows it before the next layer (activation, pooling)."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The layers ``layer_names[start:stop]`` applied to ``x``: a model cut anywhere between
        layers (split learning runs the lower part on the edge node, the upper on its supernode)."""
        for name in self.layer_names[start:stop]:
            x = self.stage(name, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def layer_keys(self, names: Sequence[str]) -> list[str]:
        """The state keys of the layers ``names``, in state order."""
        wanted = set(names)
        return [k for k in self.state_dict() if k.split(".", 1)[0] in wanted]

    def head_keys(self) -> list[str]:
        heads = self.head_names
        return [k for k in self.state_dict() if k.split(".", 1)[0] in heads]

    def base_keys(self) -> list[str]:
        heads = self.head_names
        return [k for k in self.state_dict() if k.split(".", 1)[0] not in heads]

    def base_state(self) -> StateDict:
        """Detached copies of the base tensors, contiguous and on the CPU (ready to send)."""
        return _cpu_copy(self.state_dict(), self.base_keys())

    def head_state(self) -> StateDict:
        return _cpu_copy(self.state_dict(), self.head_keys())

    def full_state(self) -> StateDict:
        return _cpu_copy(self.state_dict(), list(self.state_dict()))

    def load_part(self, state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> None:
        """Copy exactly ``keys`` from ``state`` into the model (shape-checked)."""
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"state lacks {missing}")
        own = self.state_dict()
        with torch.no_grad():
            for key in keys:
                if own[key].shape != state[key].shape:
                    raise ValueError(
                        f"{key}: shape {tuple(state[key].shape)} does not fit {tuple(own[key].shape)}"
                    )
                own[key].copy_(state[key])

    def load_base(self, state: Mapping[str, torch.Tensor]) -> None:
        self.load_part(state, self.base_keys())

    def load_head(self, state: Mapping[str, torch.Tensor]) -> None:
        self.load_part(state, self.head_keys())


def _cpu_copy(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> StateDict:
    return {k: state[k].detach().to("cpu", copy=True).contiguous() for k in keys}


class MLP(SplitModel):
    """A multilayer perceptron over the flattened sample: in → hidden… → classes, ReLU between.

    ``mlp`` is in → 128 → 64 → classes (on 8×8 digits the original DigitsMLP, same layers, same
    initialisation); ``mlp_small`` is in → 32 → classes: a second architecture for distillation
    between different models."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10,
                 head_layers: int | Sequence[str] = 1) -> None:
        super().__init__(head_layers)
        widths = [in_features, *hidden, num_classes]
        self.layer_names = (*(f"fc{i + 1}" for i in range(len(hidden))), "fc")
        for name, (n_in, n_out) in zip(self.layer_names, zip(widths, widths[1:])):
            setattr(self, name, nn.Linear(n_in, n_out))

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "fc":
            return self.fc(x)
        if name == "fc1":
            x = x.flatten(1)
        return F.relu(getattr(self, name)(x))


class CNN(SplitModel):
    """The 4-layer CNN of the FedAvg paper and PFLlib: conv 32 → conv 64 → fc 512 → fc classes.

    ReLU runs after max-pooling: ``max_pool(relu(x)) == relu(max_pool(x))`` exactly (ReLU is
    monotone) and the second does a quarter of the ReLU work.
    """

    layer_names = ("conv1", "conv2", "fc1", "fc")

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        head_layers: int | Sequence[str] = 1,
    ) -> None:
        super().__init__(head_layers)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.fc = nn.Linear(512, num_classes)

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in ("conv1", "conv2"):
            return F.relu(F.max_pool2d(getattr(self, name)(x), 2))
        if name == "fc1":
            return F.relu(self.fc1(x.flatten(1)))
        return self.fc(x)


MODEL_FOR_DATASET = {
    "digits": "mlp",
    "mnist": "cnn_mnist",
    "fashionmnist": "cnn_mnist",
    "cifar10": "cnn_cifar",
}


def build_model(
    name: str, dataset: str, num_classes: int = 10, head_layers: int | Sequence[str] = 1
) -> SplitModel:
    """Build the model ``name`` (``auto`` picks the one for ``dataset``)."""
    if name == "auto":
        name = MODEL_FOR_DATASET[dataset]
    if name in ("mlp", "mlp_small"):
        hidden = (128, 64) if name == "mlp" else (32,)
        return MLP(math.prod(INPUT_SHAPES[dataset]), hidden, num_classes, head_layers)
    if name == "cnn_mnist":
        return CNN(1, 28, num_classes, head_layers)
    if name == "cnn_cifar":
        return CNN(3, 32, num_classes, head_layers)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

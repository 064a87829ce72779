"""Built-in models, and user models named as `module:factory`."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

from torch import nn


class PaperMLP(nn.Module):
    """The worked example: 3 inputs, 4 hidden units with ReLU, 2 outputs; softmax gives the class probabilities
    (the cross-entropy loss applies it to the logits during training)."""

    def __init__(self, inputs: int = 3, hidden: int = 4, outputs: int = 2) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x):  # noqa: ANN001, ANN201 - TorchScript reads the signature
        return self.out(nn.functional.relu(self.hidden(x)))


class SmallCNN(nn.Module):
    """Two conv layers and a linear head for 1x28x28 images (10 classes)."""

    def __init__(self, classes: int = 10, channels: tuple[int, int] = (8, 16)) -> None:
        super().__init__()
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(second * 7 * 7, classes)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x).flatten(1))


BUILTIN: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "paper-mlp": (PaperMLP, (3,), 2),
    "cnn": (SmallCNN, (1, 28, 28), 10),
    # four times the channels, about 16 times the FLOPs: big enough that int8's kernels pay at any batch size
    "cnn-wide": (functools.partial(SmallCNN, channels=(32, 64)), (1, 28, 28), 10),
    # a student for distillation from `cnn`: a quarter of the channels, about a tenth of the FLOPs
    "cnn-tiny": (functools.partial(SmallCNN, channels=(2, 4)), (1, 28, 28), 10),
}


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
    """(model, input shape without the batch dimension, number of classes) for a built-in name or `module:factory`.

    A factory returns a module, or (module, input_shape, classes).
    """
    if name in BUILTIN:
        factory, shape, classes = BUILTIN[name]
        return factory(), shape, classes
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"unknown model {name!r}: use {', '.join(BUILTIN)} or module:factory")
    made = getattr(importlib.import_module(module_name), attr)()
    if isinstance(made, tuple):
        model, shape, classes = made
        return model, tuple(shape), int(classes)
    raise ValueError(f"{name} must return (module, input_shape, classes)")

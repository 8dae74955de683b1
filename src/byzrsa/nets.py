"""Network definitions: plain ``torch.nn.Module`` factories for the registered deep models.

Each factory takes one sample's ``input_shape`` and the number of classes and
returns an untrained module; :mod:`byzrsa.models` wraps it as a flat-vector
model (:class:`byzrsa.models.TorchModel`). The layer sizes follow the shape of
the input, so the networks also run on images other than 28 x 28 (8 x 8 digits
are too small for both convolutional nets and are refused).

Networks
--------
``mlp_net``
    Flatten, ``Linear(n, hidden)``, ReLU (or tanh), ``Linear(hidden, C)``.
``cnn_net``
    The PyTorch MNIST example network (``pytorch/examples``, ``mnist/main.py``),
    the CNN of the bucketing paper's experiments (Karimireddy, He, Jaggi,
    "Byzantine-robust learning on heterogeneous datasets via bucketing",
    ICLR 2022): ``Conv2d(C_in, 32, 3)``, ReLU, ``Conv2d(32, 64, 3)``, ReLU,
    ``MaxPool2d(2)``, ``Dropout(0.25)``, Flatten, ``Linear(9216, 128)``, ReLU,
    ``Dropout(0.5)``, ``Linear(128, C)``. On 28 x 28 inputs the flattened size
    is 64 * 12 * 12 = 9216; the example's final ``log_softmax`` is left out
    because byzrsa's loss is the cross-entropy of the logits (the same loss).
``lenet5_net``
    LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied
    to document recognition", Proc. IEEE 1998) in its common modern form:
    ``Conv2d(C_in, 6, 5, padding=2)``, ReLU, ``MaxPool2d(2)``,
    ``Conv2d(6, 16, 5)``, ReLU, ``MaxPool2d(2)``, Flatten,
    ``Linear(400, 120)``, ReLU, ``Linear(120, 84)``, ReLU, ``Linear(84, C)``.
    Padding 2 on 28 x 28 MNIST gives the 32 x 32 input the paper's network
    was drawn for (28 -> 28 -> 14 -> 10 -> 5, so 16 * 5 * 5 = 400 features).
    Departures from the paper: ReLU instead of its scaled tanh, max-pooling
    instead of its trainable subsampling, a full C3 (every one of the 16
    maps sees all 6 inputs, not the paper's sparse connection table) and a
    linear output layer instead of RBF units; these are the choices of
    most current re-implementations, and ReLU with max-pooling trains much
    faster with plain SGD. No dropout, no normalisation.
"""

from __future__ import annotations

import math

from torch import nn

from byzrsa.errors import ConfigError

__all__ = ["mlp_net", "cnn_net", "lenet5_net", "image_shape"]


def image_shape(input_shape: tuple[int, ...], model: str, minimum: int) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``, or a :class:`ConfigError` naming the model.

    A ``(H, W)`` shape is taken as one channel. Both sides must be at least
    ``minimum`` pixels (what the network's convolutions and poolings need).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ConfigError(
            f"model {model!r} needs image inputs (channels, height, width), but one sample has shape {shape}; "
            f"use an image dataset (mnist, fashion-mnist, mnist-sample) or the softmax/mlp model"
        )
    if min(shape[1:]) < minimum:
        raise ConfigError(
            f"model {model!r} needs images of at least {minimum} x {minimum} pixels, got {shape[1]} x {shape[2]}; "
            f"use a 28 x 28 dataset (mnist, fashion-mnist, mnist-sample) or the softmax/mlp model"
        )
    return shape  # type: ignore[return-value]


def mlp_net(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, activation: str = "relu") -> nn.Sequential:
    """One hidden layer of ``hidden`` units on the flattened input, ReLU or tanh (Byrd-SAGA's 784-50-10 MLP)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]()
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), act, nn.Linear(hidden, num_classes))


def cnn_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The PyTorch MNIST example CNN (two 3 x 3 convolutions, dropout 0.25 and 0.5); see the module docstring."""
    channels, height, width = image_shape(input_shape, "cnn", minimum=6)
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)  # two unpadded 3 x 3 convolutions, then a 2 x 2 pool
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )


def lenet5_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """LeNet-5 with ReLU and max-pooling, padding 2 on the first convolution; see the module docstring."""
    channels, height, width = image_shape(input_shape, "lenet5", minimum=12)
    # padding 2 keeps the size through C1; pool halves it; C3 (5 x 5, unpadded) takes 4; pool halves it
    flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )

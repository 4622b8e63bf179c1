"""Image classifiers with a split between the feature extractor and the linear head.

Every model takes float32 images of shape N x C x H x W with values in [0, 1].
It exposes ``forward_features`` (penultimate features, N x ``feature_dim``) and
``forward_head`` (logits, N x ``num_classes``), so strategies can work on the
features, on the head, or on both.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fedlab.registry import Registry

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., "Classifier"]

MODELS: Registry[ModelBuilder] = Registry("model")

CONVNET_DEFAULT_WIDTH = 128
CONVNET_DEFAULT_DEPTH = 3
RESNET_DEFAULT_WIDTH = 64


class Classifier(nn.Module, ABC):
    """Base class of all classifiers, a feature extractor followed by a linear head.

    Attributes
    ----------
    in_channels : int
        Number of input image channels.
    num_classes : int
        Number of output logits.
    image_size : int
        Height and width of the square input images the model was built for.
    feature_dim : int
        Length of the feature vector returned by ``forward_features``.
    """

    in_channels: int
    num_classes: int
    image_size: int
    feature_dim: int

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the penultimate features, shape N x ``feature_dim``."""

    @abstractmethod
    def forward_head(self, features: Tensor) -> Tensor:
        """Map features of shape N x ``feature_dim`` to logits of shape N x ``num_classes``."""

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits, equal to ``forward_head(forward_features(x))``."""
        return self.forward_head(self.forward_features(x))


def _check_positive_int(name: str, value: object) -> int:
    # bool is a subclass of int, but True/False as a channel count is a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}. Pass a positive integer.")
    return value


def _check_input(model: Classifier, x: Tensor, require_size: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != model.in_channels:
        raise ValueError(
            f"x must have shape N x {model.in_channels} x H x W, got {tuple(x.shape)}. "
            "Pass a batch of images with the channel count the model was built for."
        )
    if require_size and tuple(x.shape[2:]) != (model.image_size, model.image_size):
        raise ValueError(
            f"x must have spatial size {model.image_size}x{model.image_size} for this model, "
            f"got {x.shape[2]}x{x.shape[3]}. Resize the images or rebuild the model with "
            "image_size set to the input size."
        )


def max_convnet_depth(image_size: int) -> int:
    """Return the largest ConvNet depth whose output feature map is at least 1x1.

    Each block halves the spatial size with floor division, so the maximum depth
    is ``floor(log2(image_size))``.
    """
    _check_positive_int("image_size", image_size)
    return image_size.bit_length() - 1


class ConvNet(Classifier):
    """Small ConvNet common in dataset-distillation work, with ``depth`` conv blocks and a linear head.

    Each block is conv3x3 (``width`` channels, padding 1) -> BatchNorm2d -> ReLU ->
    AvgPool2d(2), so the spatial size is floor-halved per block (28 -> 14 -> 7 -> 3).
    The flattened output of the last block is the feature vector.

    Parameters
    ----------
    in_channels, num_classes, image_size : int
        Input channels, number of classes and the height/width of square inputs.
    width : int
        Channels of every conv layer.
    depth : int
        Number of conv blocks, from 1 to ``floor(log2(image_size))``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, image_size: int, width: int, depth: int
    ) -> None:
        super().__init__()
        max_depth = max_convnet_depth(image_size)
        if depth > max_depth:
            raise ValueError(
                f"depth={depth} is too large for image_size={image_size}. Each ConvNet block "
                f"halves the spatial size, so the max depth for this image size is {max_depth}. "
                f"Pass depth <= {max_depth}."
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size

        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.AvgPool2d(kernel_size=2),
                )
            )
            channels = width
        self.features = nn.Sequential(*blocks)

        final_size = image_size >> depth
        self.feature_dim = width * final_size * final_size
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        _check_input(self, x, require_size=True)
        return torch.flatten(self.features(x), start_dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)


class BasicBlock(nn.Module):
    """Two 3x3 conv layers with BatchNorm and an identity or 1x1-conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(Classifier):
    """ResNet-18 with a small-image stem, as used for CIFAR-sized inputs.

    The stem is one 3x3 conv with stride 1 followed by BatchNorm and ReLU, with no
    max-pool. Four stages of two BasicBlocks each have ``width``, ``2*width``,
    ``4*width`` and ``8*width`` channels, and stages 2-4 halve the spatial size.
    Global average pooling gives a feature vector of length ``8*width``, so
    ``width=64`` is the standard ResNet-18 (512 features, about 11.2M parameters
    for 3 input channels and 10 classes). Any input size of at least 1x1 works.

    Parameters
    ----------
    in_channels, num_classes, image_size : int
        Input channels, number of classes and the nominal image height/width.
    width : int
        Channels of the stem and of the first stage.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = width
        for stage_index in range(4):
            out_channels = width * 2**stage_index
            stride = 1 if stage_index == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(channels, out_channels, stride),
                    BasicBlock(out_channels, out_channels, 1),
                )
            )
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)

        self.feature_dim = channels
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        _check_input(self, x, require_size=False)
        out = self.stages(self.stem(x))
        return torch.flatten(self.pool(out), start_dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)


@MODELS.register("convnet")
def build_convnet(
    in_channels: int, num_classes: int, image_size: int, width: int | None, depth: int
) -> ConvNet:
    """Build a :class:`ConvNet`. ``width=None`` selects 128 channels."""
    width = CONVNET_DEFAULT_WIDTH if width is None else _check_positive_int("width", width)
    return ConvNet(in_channels, num_classes, image_size, width, depth)


@MODELS.register("resnet18")
def build_resnet18(
    in_channels: int, num_classes: int, image_size: int, width: int | None, depth: int
) -> ResNet18:
    """Build a :class:`ResNet18`. ``width=None`` selects 64, and ``depth`` is ignored."""
    width = RESNET_DEFAULT_WIDTH if width is None else _check_positive_int("width", width)
    return ResNet18(in_channels, num_classes, image_size, width)


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int | None = None,
    depth: int = CONVNET_DEFAULT_DEPTH,
) -> Classifier:
    """Build a freshly initialised classifier by registry name.

    Parameters
    ----------
    name : str
        Model id, one of ``MODELS.names()`` (``"convnet"``, ``"resnet18"``).
    in_channels : int
        Input image channels, >= 1.
    num_classes : int
        Number of logits, >= 1.
    image_size : int
        Height and width of the square input images, >= 1.
    width : int or None
        Channel width. For ``convnet`` it is the channels of every conv layer
        (default 128). For ``resnet18`` it is the channels of the stem and first
        stage, doubled in each later stage (default 64, the standard network).
    depth : int
        Number of ConvNet blocks (default 3). ``resnet18`` ignores it.

    Returns
    -------
    Classifier
        The model, in training mode, with PyTorch's default initialisation. Seed it
        with ``torch.manual_seed`` before the call for reproducible weights.

    Raises
    ------
    ValueError
        If ``name`` is unknown, a size is below 1, or ``depth`` is too large for
        ``image_size``.
    TypeError
        If a size is not an int.
    """
    builder = MODELS.get(name)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("image_size", image_size)
    _check_positive_int("depth", depth)
    model = builder(in_channels, num_classes, image_size, width, depth)
    logger.debug(
        "built model %s: in_channels=%d num_classes=%d image_size=%d feature_dim=%d params=%d",
        name,
        in_channels,
        num_classes,
        image_size,
        model.feature_dim,
        parameter_count(model),
    )
    return model


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Count the scalar parameters of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any module.
    trainable_only : bool
        Count only parameters with ``requires_grad=True``.

    Returns
    -------
    int
        Total number of parameter elements. BatchNorm running statistics are
        buffers and are not counted.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

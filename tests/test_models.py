"""Tests for fedlab.models: shapes, the feature/head split, ConvNet structure and input checks."""

import pytest
import torch
from torch import nn

from fedlab.models import (
    MODELS,
    Classifier,
    ConvNet,
    ResNet18,
    build_model,
    max_convnet_depth,
    parameter_count,
)

# Small widths keep the forward passes fast on CPU, with the same layer structure.
SHAPE_CASES = [
    ("convnet", 1, 28, 16, 16 * 3 * 3),
    ("convnet", 3, 32, 16, 16 * 4 * 4),
    ("resnet18", 1, 28, 8, 64),
    ("resnet18", 3, 32, 8, 64),
]


@pytest.fixture(autouse=True)
def limit_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_registry_lists_both_models():
    assert "convnet" in MODELS
    assert "resnet18" in MODELS


@pytest.mark.parametrize("name,channels,size,width,feature_dim", SHAPE_CASES)
def test_model_output_shapes(name, channels, size, width, feature_dim):
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size, width=width).eval()
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(1))

    features = model.forward_features(x)
    logits = model(x)

    assert isinstance(model, Classifier)
    assert model.feature_dim == feature_dim
    assert features.shape == (2, feature_dim)
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("name,channels,size,width,feature_dim", SHAPE_CASES)
def test_forward_equals_head_of_features(name, channels, size, width, feature_dim):
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size, width=width).eval()
    x = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        direct = model(x)
        split = model.forward_head(model.forward_features(x))

    torch.testing.assert_close(direct, split)


def test_default_widths():
    convnet = build_model("convnet", 1, 10, 28)
    resnet = build_model("resnet18", 3, 10, 32)

    assert convnet.feature_dim == 128 * 3 * 3
    assert resnet.feature_dim == 512
    # The standard CIFAR ResNet-18 has 11,173,962 parameters for 10 classes.
    assert parameter_count(resnet) == 11_173_962


def test_convnet_block_structure():
    model = build_model("convnet", 3, 10, 32, width=24, depth=3)

    assert isinstance(model, ConvNet)
    assert len(model.features) == 3
    for index, block in enumerate(model.features):
        conv, norm, activation, pool = block
        assert isinstance(conv, nn.Conv2d)
        assert conv.in_channels == (3 if index == 0 else 24)
        assert conv.out_channels == 24
        assert conv.kernel_size == (3, 3)
        assert conv.padding == (1, 1)
        assert isinstance(norm, nn.BatchNorm2d)
        assert norm.num_features == 24
        assert isinstance(activation, nn.ReLU)
        assert isinstance(pool, nn.AvgPool2d)
        assert pool.kernel_size == 2
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == 24 * 4 * 4


def test_convnet_spatial_size_floor_halves():
    for depth, side in [(1, 14), (2, 7), (3, 3), (4, 1)]:
        model = build_model("convnet", 1, 10, 28, width=2, depth=depth)
        assert model.feature_dim == 2 * side * side


def test_max_convnet_depth():
    assert max_convnet_depth(28) == 4
    assert max_convnet_depth(32) == 5
    assert max_convnet_depth(1) == 0


def test_convnet_depth_too_large_names_values():
    with pytest.raises(ValueError, match=r"depth=5.*image_size=28.*max depth.* 4"):
        build_model("convnet", 1, 10, 28, depth=5)


def test_resnet_small_stem():
    model = build_model("resnet18", 3, 10, 32, width=8)

    assert isinstance(model, ResNet18)
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3)
    assert stem_conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_resnet_ignores_depth():
    shallow = build_model("resnet18", 1, 10, 28, width=4, depth=1)
    deep = build_model("resnet18", 1, 10, 28, width=4, depth=9)

    assert parameter_count(shallow) == parameter_count(deep)


def test_resnet_width_scales_channels():
    model = build_model("resnet18", 1, 10, 28, width=4)
    widths = [stage[0].conv1.out_channels for stage in model.stages]

    assert widths == [4, 8, 16, 32]
    assert model.feature_dim == 32


def test_parameter_count_trainable_only():
    model = build_model("convnet", 1, 10, 28, width=4, depth=1)
    total = parameter_count(model)
    model.head.requires_grad_(False)

    assert total == sum(p.numel() for p in model.parameters())
    assert parameter_count(model, trainable_only=True) == total - model.head.weight.numel() - 10


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"'vgg'.*convnet, resnet18"):
        build_model("vgg", 1, 10, 28)


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"image_size": 0}, "image_size"),
        ({"width": 0}, "width"),
        ({"depth": 0}, "depth"),
        ({"width": -3}, "width"),
    ],
)
def test_nonpositive_sizes_raise(kwargs, parameter):
    arguments = {"in_channels": 1, "num_classes": 10, "image_size": 28, "width": 4, "depth": 2}
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=rf"{parameter} must be >= 1, got"):
        build_model("convnet", **arguments)


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        ({"in_channels": 1.0}, "in_channels"),
        ({"width": "wide"}, "width"),
        ({"depth": True}, "depth"),
    ],
)
def test_non_int_sizes_raise(kwargs, parameter):
    arguments = {"in_channels": 1, "num_classes": 10, "image_size": 28, "width": 4, "depth": 2}
    arguments.update(kwargs)

    with pytest.raises(TypeError, match=rf"{parameter} must be an int"):
        build_model("resnet18", **arguments)


def test_wrong_input_channels_raise():
    model = build_model("resnet18", 3, 10, 32, width=4)

    with pytest.raises(ValueError, match=r"N x 3 x H x W.*\(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))


def test_convnet_wrong_input_size_raise():
    model = build_model("convnet", 1, 10, 28, width=4)

    with pytest.raises(ValueError, match=r"28x28.*got 32x32"):
        model(torch.zeros(2, 1, 32, 32))

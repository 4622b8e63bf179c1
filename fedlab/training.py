"""Supervised training, distillation and evaluation loops shared by clients and server."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def select_device() -> torch.device:
    """Return the CUDA device when one is visible to this process, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def limit_torch_threads() -> int:
    """Use as many intra-op threads as CPUs this process may run on.

    ``FEDLAB_TORCH_THREADS`` overrides the count; otherwise Ray's ``OMP_NUM_THREADS`` for an
    actor, or the CPUs in this process's affinity mask.

    Without this, every simulated client starts one thread per core of the machine and
    concurrent clients slow each other down.
    """
    threads = int(os.environ.get("FEDLAB_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS") or 0)
    if threads <= 0:
        threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def seeded_generator(*parts: int) -> torch.Generator:
    """Return a CPU generator seeded from several integers (run seed, client id, purpose)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to `max_shift` pixels (zero padding), a cheap augmentation."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = offsets[:, 0].view(n, 1, 1) + torch.arange(h).view(1, h, 1)
    cols = offsets[:, 1].view(n, 1, 1) + torch.arange(w).view(1, 1, w)
    batch = torch.arange(n).view(n, 1, 1)
    # Gather the shifted window for every image at once: N x H x W x C, then back to NCHW.
    windows = padded.permute(0, 2, 3, 1)[batch, rows.to(images.device), cols.to(images.device)]
    return windows.permute(0, 3, 1, 2).contiguous()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _sgd_with_cosine(
    model: nn.Module, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return optimizer, scheduler


def _fit(
    model: nn.Module,
    images: Tensor,
    loss_of: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    generator: torch.Generator,
    max_shift: int,
) -> float:
    """Run the shared SGD loop; `loss_of(logits, batch_index)` gives each batch's loss."""
    steps = epochs * math.ceil(len(images) / batch_size)
    optimizer, scheduler = _sgd_with_cosine(model, lr, weight_decay, steps)
    model.train()
    last_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for index in _batches(len(images), batch_size, generator):
            if len(index) < 2 and len(images) >= 2:
                continue  # a batch of one breaks BatchNorm statistics
            x = random_shift(images[index], max_shift, generator)
            loss = loss_of(model(x), index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
            count += len(index)
        last_loss = total / max(count, 1)
    model.eval()
    return last_loss


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    generator: torch.Generator,
    max_shift: int = 2,
) -> float:
    """Train `model` with cross-entropy (SGD, Nesterov momentum, cosine schedule).

    Parameters
    ----------
    images : Tensor
        Float images in [0, 1], N x C x H x W, on the model's device.
    max_shift : int (default: 2)
        Random translation in pixels used as augmentation; 0 turns it off.

    Returns
    -------
    float
        Mean training loss over the last epoch.
    """
    if len(images) == 0:
        raise ValueError("train_classifier received no images; the client partition is empty")
    return _fit(
        model,
        images,
        lambda logits, index: F.cross_entropy(logits, labels[index]),
        epochs, lr, batch_size, weight_decay, generator, max_shift,
    )


def distill_classifier(
    model: nn.Module,
    images: Tensor,
    soft_targets: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    temperature: float,
    generator: torch.Generator,
    weight_decay: float = 5e-4,
    max_shift: int = 2,
) -> float:
    """Train `model` to match soft labels with the KL divergence (knowledge distillation).

    The loss is ``T^2 * KL(soft_targets || softmax(logits / T))``; `soft_targets` are
    probability rows that were computed by the teachers at their own temperature.

    Returns
    -------
    float
        Mean loss over the last epoch.
    """
    if len(images) == 0:
        raise ValueError("distill_classifier received no images; no client sent distillates")

    def kl_loss(logits: Tensor, index: Tensor) -> Tensor:
        log_probs = F.log_softmax(logits / temperature, dim=1)
        return F.kl_div(log_probs, soft_targets[index], reduction="batchmean") * temperature**2

    return _fit(model, images, kl_loss, epochs, lr, batch_size, weight_decay, generator, max_shift)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Return the model's logits for `images`, computed in eval mode and in batches."""
    model.eval()
    outputs = [model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Return the top-1 accuracy of `logits` against integer `labels`."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty test set is undefined")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def evaluate_classifier(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Return the top-1 accuracy of `model` on `images`."""
    return accuracy(predict_logits(model, images), labels)


def average_state_dicts(states: list[dict[str, Tensor]], weights: list[float]) -> dict[str, Tensor]:
    """Return the `weights`-weighted average of state dicts, FedAvg's aggregate.

    Every entry is averaged in float64 and cast back to its dtype, so integer buffers such as
    BatchNorm's ``num_batches_tracked`` stay integers.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state dict, got {len(states)} state dicts and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(weight < 0 for weight in weights):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    averaged = {}
    for key, first in states[0].items():
        mean = sum(state[key].double() * (weight / total) for state, weight in zip(states, weights))
        averaged[key] = mean.to(first.dtype)
    return averaged

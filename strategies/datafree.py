"""Building blocks of data-free one-shot distillation, shared by DENSE and Co-Boosting.

Both methods train the global model (the *student*) from the clients' local models alone:
a conditional generator learns to synthesise inputs on which the ensemble of local models
predicts the generator's target labels, and the student is distilled from the ensemble's
predictions on those inputs. See ``strategies/dense.py`` (Zhang et al., NeurIPS 2022,
https://arxiv.org/abs/2112.12371) and ``strategies/coboosting.py`` (Dai et al., ICLR 2024,
https://arxiv.org/abs/2402.15070).

The pieces, each usable on its own:

- :class:`ConditionalGenerator`: noise and a learned label embedding to images in [0, 1];
- :class:`BatchNormStatistics`: forward hooks that compare each BatchNorm layer's input
  statistics on a generated batch with the layer's running statistics;
- :class:`WeightedEnsemble`: a convex combination of the members' logits, and
  :func:`project_to_simplex` / :func:`update_ensemble_weights` to learn it;
- the losses (:func:`hardness_weighted_cross_entropy`, :func:`kl_disagreement`,
  :func:`adversarial_loss`, :func:`student_hardness_weights`) and
  :func:`perturb_toward_disagreement` for adversarial inputs;
- :class:`SampleBank`: a bounded memory of generated samples with the members' logits;
- :func:`train_datafree`: the alternating generator / student loop;
- :class:`DataFreeStrategy`: the strategy skeleton, one hook (:meth:`DataFreeStrategy.settings`)
  per method.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import get_args

import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, RecordDict
from torch import Tensor, nn

from fedlab.config import EnsembleOutput, RunConfig
from fedlab.payload import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    TRAIN,
    load_model_record,
    model_to_record,
)
from fedlab.server_run import ServerRun
from fedlab.training import average_state_dicts, seeded_generator
from strategies.base import FedLabStrategy, StrategyResult

logger = logging.getLogger(__name__)

# Purposes mixed into the run seed so that each random stream of the server is independent.
_SEED_GENERATOR_INIT, _SEED_SAMPLING = 104_729, 104_743

# Floor of the ensemble's averaged probabilities before the log, so log(0) never occurs.
_MIN_PROBABILITY = 1e-12


# Generator ---------------------------------------------------------------------------------


class ConditionalGenerator(nn.Module):
    """Map noise ``z`` and a class label to an image in [0, 1] (DCGAN-style decoder).

    The label is looked up in a learned embedding of the same size as the noise and
    concatenated to it. A linear layer maps the pair to a feature map of a quarter of the
    image size, and two nearest-neighbour upsampling blocks (conv3x3, BatchNorm, LeakyReLU)
    bring it to full size. A final conv3x3 and a sigmoid give the image. Sizes that are not
    multiples of 4 are reached by bilinear resizing of the last feature map.

    Parameters
    ----------
    noise_dim : int
        Length of the noise vector, and of the label embedding.
    num_classes : int
        Number of labels the generator is conditioned on.
    image_shape : tuple of int
        ``(channels, height, width)`` of the generated images.
    channels : int
        Channels of the last upsampling block; the first has twice as many.
    """

    def __init__(
        self, noise_dim: int, num_classes: int, image_shape: Sequence[int], channels: int
    ) -> None:
        super().__init__()
        if noise_dim < 1 or num_classes < 1 or channels < 1:
            raise ValueError(
                f"noise_dim, num_classes and channels must be >= 1, got {noise_dim}, "
                f"{num_classes} and {channels}"
            )
        image_channels, height, width = (int(size) for size in image_shape)
        self.noise_dim = noise_dim
        self.num_classes = num_classes
        self.image_shape = (image_channels, height, width)
        self.init_size = (math.ceil(height / 4), math.ceil(width / 4))
        wide = 2 * channels

        self.embedding = nn.Embedding(num_classes, noise_dim)
        self.project = nn.Linear(2 * noise_dim, wide * self.init_size[0] * self.init_size[1])
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(wide),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(wide, wide, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(wide),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(wide, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.to_image = nn.Conv2d(channels, image_channels, kernel_size=3, padding=1)

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        """Generate one image per row of `noise` (N x noise_dim) and entry of `labels` (N)."""
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(f"noise must have shape N x {self.noise_dim}, got {tuple(noise.shape)}")
        if labels.shape != (noise.shape[0],):
            raise ValueError(f"labels must have shape ({noise.shape[0]},), got {tuple(labels.shape)}")
        hidden = self.project(torch.cat([noise, self.embedding(labels)], dim=1))
        hidden = hidden.view(len(noise), -1, *self.init_size)
        hidden = self.blocks(hidden)
        _, height, width = self.image_shape
        if tuple(hidden.shape[2:]) != (height, width):
            hidden = F.interpolate(hidden, size=(height, width), mode="bilinear", align_corners=False)
        return torch.sigmoid(self.to_image(hidden))


# Batch-norm statistics ---------------------------------------------------------------------


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of some models that measure statistics mismatch.

    While :meth:`active` is entered, each hooked layer adds
    ``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` for its input ``x`` to
    :meth:`loss`, where mean and (biased) variance are taken per channel over every
    dimension but the channel one. Outside :meth:`active` the hooks record nothing, so
    labelling forward passes cost nothing extra. Call :meth:`remove` when done.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self._terms: list[Tensor] = []
        self._recording = False
        self._handles = [
            module.register_forward_hook(self._hook)
            for model in models
            for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
        ]

    @property
    def num_layers(self) -> int:
        """Number of hooked BatchNorm layers."""
        return len(self._handles)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if not self._recording:
            return
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self._terms.append(
            torch.linalg.vector_norm(mean - module.running_mean)
            + torch.linalg.vector_norm(var - module.running_var)
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Record the hooked layers' mismatch during the block; earlier records are cleared."""
        self._terms = []
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def loss(self) -> Tensor:
        """Return the summed mismatch of every layer recorded in the last :meth:`active` block."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()

    def remove(self) -> None:
        """Remove the hooks from the models."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._terms = []


# Ensemble with weights ---------------------------------------------------------------------


def project_to_simplex(values: Tensor) -> Tensor:
    """Return the Euclidean projection of a vector onto the probability simplex.

    The result is the non-negative vector summing to 1 that is closest to `values` in L2;
    it sorts the entries and shifts them all by one threshold, clipping at zero (Held,
    Wolfe and Crowder, 1974; Duchi et al., ICML 2008).
    """
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"values must be a non-empty vector, got shape {tuple(values.shape)}")
    exact = values.double()  # float32 sums of large entries drift from 1 by about 1e-5
    ordered, _ = torch.sort(exact, descending=True)
    cumulative = ordered.cumsum(dim=0) - 1
    ranks = torch.arange(1, len(exact) + 1, dtype=exact.dtype, device=exact.device)
    support = ordered - cumulative / ranks > 0
    last = int(support.nonzero().max())
    threshold = cumulative[last] / (last + 1)
    return (exact - threshold).clamp(min=0).to(values.dtype)


class WeightedEnsemble(nn.Module):
    """Convex combination of the members' predictions, with weights on the simplex.

    With ``output="logits"`` the ensemble's logits are ``sum_k w_k f_k(x)``, the weighted
    logit average that DENSE and Co-Boosting use. With ``output="probabilities"`` they are
    ``log sum_k w_k softmax(f_k(x))``, the log of the weighted mean of the members'
    probabilities: a member that never saw a class then cannot outvote, by the size of its
    logits, the members that did.

    The weights `w` are a buffer (saved with the state dict) that always lies on the
    probability simplex, which :meth:`set_weights` checks. They start uniform. Members
    stay in eval mode and their parameters are frozen.
    """

    weights: Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Tensor | None = None,
        output: EnsembleOutput = "logits",
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("WeightedEnsemble needs at least one member model")
        if output not in get_args(EnsembleOutput):
            raise ValueError(f"output must be one of {', '.join(get_args(EnsembleOutput))}, got {output!r}")
        self.output = output
        self.members = nn.ModuleList(members)
        for parameter in self.members.parameters():
            parameter.requires_grad_(False)
        self.members.eval()
        uniform = torch.full((len(members),), 1.0 / len(members))
        self.register_buffer("weights", uniform)
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights: Tensor, tolerance: float = 1e-5) -> None:
        """Replace the weights; they must be non-negative and sum to 1 within `tolerance`."""
        weights = weights.detach().to(self.weights)
        if weights.shape != self.weights.shape:
            raise ValueError(f"expected {len(self.members)} weights, got shape {tuple(weights.shape)}")
        if bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > tolerance:
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got {weights.tolist()}")
        self.weights.copy_(weights)

    def train(self, mode: bool = True) -> WeightedEnsemble:
        # The members are fixed teachers: their BatchNorm layers always use running statistics.
        super().train(mode)
        self.members.eval()
        return self

    def member_logits(self, x: Tensor) -> Tensor:
        """Return every member's logits, shape K x N x num_classes."""
        return torch.stack([member(x) for member in self.members])

    def combine(self, member_logits: Tensor, weights: Tensor | None = None) -> Tensor:
        """Combine K x N x C member logits with `weights` (default: the ensemble's own)."""
        weights = self.weights if weights is None else weights
        if self.output == "logits":
            return torch.einsum("k,knc->nc", weights, member_logits)
        probabilities = torch.einsum("k,knc->nc", weights, F.softmax(member_logits, dim=2))
        return torch.log(probabilities.clamp(min=_MIN_PROBABILITY))

    def forward(self, x: Tensor) -> Tensor:
        return self.combine(self.member_logits(x))


def update_ensemble_weights(
    ensemble: WeightedEnsemble,
    member_logits: Tensor,
    labels: Tensor,
    lr: float,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """Take one signed-gradient step on the ensemble weights, then project onto the simplex.

    The step lowers the (optionally sample-weighted) cross-entropy of the weighted
    ensemble's logits against `labels` on precomputed `member_logits` (K x N x C), so
    members that classify the samples well gain weight.

    Returns
    -------
    Tensor
        The new weights, also stored in `ensemble`.
    """
    weights = ensemble.weights.detach().clone().requires_grad_(True)
    losses = F.cross_entropy(ensemble.combine(member_logits.detach(), weights), labels, reduction="none")
    if sample_weights is not None:
        losses = losses * sample_weights
    (gradient,) = torch.autograd.grad(losses.mean(), weights)
    updated = project_to_simplex(weights.detach() - lr * gradient.sign())
    ensemble.set_weights(updated)
    return updated


# Losses ------------------------------------------------------------------------------------


def label_hardness_weights(logits: Tensor, labels: Tensor, hardness: float) -> Tensor:
    """Return per-sample weights ``(1 - p_y)^hardness`` as constants.

    ``p_y`` is the probability the logits give the target label, so samples the classifier
    is unsure of weigh more, in the manner of the focal loss. ``hardness = 0`` gives ones.
    """
    if hardness == 0:
        return torch.ones(len(labels), device=logits.device)
    with torch.no_grad():
        target_probability = F.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        return (1 - target_probability).pow(hardness)


def hardness_weighted_cross_entropy(logits: Tensor, labels: Tensor, hardness: float) -> Tensor:
    """Return the mean cross-entropy with the sample weights of :func:`label_hardness_weights`.

    ``hardness = 0`` gives the plain cross-entropy.
    """
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (label_hardness_weights(logits, labels, hardness) * losses).mean()


def kl_disagreement(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Return per-sample ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, shape N."""
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    student = F.log_softmax(student_logits / temperature, dim=1)
    return (teacher.exp() * (teacher - student)).sum(dim=1) * temperature**2


def adversarial_loss(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Return the generator's adversarial term: minus the teacher-student KL divergence.

    Minimising it moves generated samples to where the student disagrees with the ensemble.
    Only samples on which both already predict the same class count (DENSE's indicator),
    so the generator is not rewarded for drifting away from the ensemble's decision.
    """
    agree = (teacher_logits.argmax(dim=1) == student_logits.argmax(dim=1)).to(teacher_logits.dtype)
    return -(kl_disagreement(teacher_logits, student_logits, temperature) * agree).mean()


def student_hardness_weights(teacher_logits: Tensor, student_logits: Tensor, hardness: float) -> Tensor:
    """Return per-sample weights ``(1 - q)^hardness`` normalised to mean 1 (constants).

    ``q`` is the student's probability of the ensemble's predicted class, so samples the
    student finds hard weigh more. ``hardness = 0`` gives all-ones weights.
    """
    if hardness == 0:
        return torch.ones(len(teacher_logits), device=teacher_logits.device)
    with torch.no_grad():
        predicted = teacher_logits.argmax(dim=1, keepdim=True)
        student_probability = F.softmax(student_logits, dim=1).gather(1, predicted).squeeze(1)
        weights = (1 - student_probability).pow(hardness)
        return weights / weights.mean().clamp(min=1e-12)


def perturb_toward_disagreement(inputs: Tensor, disagreement: Tensor, epsilon: float) -> Tensor:
    """Return ``clip(x + epsilon * sign(d disagreement / dx), 0, 1)``, detached (one FGSM step).

    `disagreement` must be a scalar computed from `inputs` in the current autograd graph;
    the graph is kept so the caller can still back-propagate through it.
    """
    (gradient,) = torch.autograd.grad(disagreement, inputs, retain_graph=True)
    return (inputs.detach() + epsilon * gradient.sign()).clamp(0.0, 1.0)


def perturb_inputs(
    ensemble: nn.Module, student: nn.Module, inputs: Tensor, epsilon: float, temperature: float = 1.0
) -> Tensor:
    """Return `inputs` moved by one signed-gradient step that raises ensemble-student KL.

    Every pixel moves by at most `epsilon`, and the result stays in [0, 1].
    """
    x = inputs.detach().clone().requires_grad_(True)
    disagreement = kl_disagreement(ensemble(x), student(x), temperature).mean()
    return perturb_toward_disagreement(x, disagreement, epsilon)


# Memory bank -------------------------------------------------------------------------------


class SampleBank:
    """Bounded first-in-first-out memory of generated samples.

    Each sample is stored with its generator label and the members' logits on it (K x C),
    so the ensemble's prediction for any weights is recomputed without another forward
    pass through the members.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.images: Tensor | None = None
        self.member_logits: Tensor | None = None  # N x K x C
        self.labels: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def add(self, images: Tensor, member_logits: Tensor, labels: Tensor) -> None:
        """Append a batch (member logits as K x N x C); the oldest samples beyond capacity go."""
        images = images.detach()
        member_logits = member_logits.detach().transpose(0, 1)
        labels = labels.detach()
        if self.labels is None:
            self.images, self.member_logits, self.labels = images, member_logits, labels
        else:
            self.images = torch.cat([self.images, images])
            self.member_logits = torch.cat([self.member_logits, member_logits])
            self.labels = torch.cat([self.labels, labels])
        excess = len(self) - self.capacity
        if excess > 0:
            self.images = self.images[excess:]
            self.member_logits = self.member_logits[excess:]
            self.labels = self.labels[excess:]

    def contents(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return every stored sample: images, member logits (K x N x C) and labels."""
        if self.images is None or self.member_logits is None or self.labels is None:
            raise ValueError("the sample bank is empty")
        return self.images, self.member_logits.transpose(0, 1), self.labels

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Draw up to `batch_size` distinct samples: images, member logits (K x B x C), labels."""
        images, member_logits, labels = self.contents()
        index = torch.randperm(len(self), generator=generator)[:batch_size].to(labels.device)
        return images[index], member_logits[:, index], labels[index]


# The alternating loop ----------------------------------------------------------------------


@dataclass(frozen=True)
class DataFreeSettings:
    """Settings of :func:`train_datafree`; the Co-Boosting parts are off at zero.

    The defaults are the run config's ``datafree-*`` defaults, so library use and
    ``strategy='dense'`` behave alike.
    """

    epochs: int = 20
    generator_steps: int = 5
    student_steps: int = 20
    batch_size: int = 64
    noise_dim: int = 64
    generator_channels: int = 32
    generator_lr: float = 0.01
    student_lr: float = 0.01
    temperature: float = 1.0
    ce_weight: float = 1.0
    bn_weight: float = 10.0
    adv_weight: float = 1.0
    memory_size: int = 10_000
    ensemble_output: EnsembleOutput = "probabilities"
    # Co-Boosting: focal exponent of the sample weights, FGSM step size, ensemble-weight step.
    hardness: float = 0.0
    perturb_epsilon: float = 0.0
    ensemble_weight_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for BatchNorm statistics, got {self.batch_size}")
        if self.memory_size < self.batch_size:
            raise ValueError(
                f"memory_size ({self.memory_size}) must be at least batch_size ({self.batch_size})"
            )

    @classmethod
    def from_config(cls, config: RunConfig, coboosting: bool) -> DataFreeSettings:
        """Read the shared ``datafree-*`` keys, and the ``coboosting-*`` keys if `coboosting`."""
        shared = cls(
            epochs=config.datafree_epochs,
            generator_steps=config.datafree_generator_steps,
            student_steps=config.datafree_student_steps,
            batch_size=config.datafree_batch_size,
            noise_dim=config.datafree_noise_dim,
            generator_channels=config.datafree_generator_channels,
            generator_lr=config.datafree_generator_lr,
            student_lr=config.datafree_student_lr,
            temperature=config.datafree_temperature,
            ce_weight=config.datafree_ce_weight,
            bn_weight=config.datafree_bn_weight,
            adv_weight=config.datafree_adv_weight,
            memory_size=config.datafree_memory_size,
            ensemble_output=config.datafree_ensemble_output,
        )
        if not coboosting:
            return shared
        return DataFreeSettings(
            **{
                **asdict(shared),
                "hardness": config.coboosting_hardness,
                "perturb_epsilon": config.coboosting_epsilon,
                "ensemble_weight_lr": config.coboosting_weight_lr,
            }
        )


@dataclass
class DataFreeReport:
    """Figures of one :func:`train_datafree` run, for results.json."""

    generator_loss: float = float("nan")
    ce_loss: float = float("nan")
    bn_loss: float = float("nan")
    adv_loss: float = float("nan")
    student_loss: float = float("nan")
    num_generated: int = 0
    bank_size: int = 0
    ensemble_weights: list[float] = field(default_factory=list)
    generator_seconds: float = 0.0
    student_seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def balanced_labels(batch_size: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """Return `batch_size` labels in random order, every class as equally often as possible."""
    labels = torch.arange(batch_size) % num_classes
    return labels[torch.randperm(batch_size, generator=generator)]


@dataclass
class GeneratorLosses:
    """The terms of one generator step's loss (plain floats)."""

    total: float
    ce: float
    bn: float
    adv: float


def generator_step(
    generator: ConditionalGenerator,
    optimizer: torch.optim.Optimizer,
    ensemble: WeightedEnsemble,
    student: nn.Module,
    bn_statistics: BatchNormStatistics,
    bank: SampleBank,
    settings: DataFreeSettings,
    sampling: torch.Generator,
) -> GeneratorLosses:
    """Take one generator step and put the generated batch (and its hard copy) in `bank`.

    The student must be in eval mode: here it is a fixed discriminator.
    """
    device = next(generator.parameters()).device
    noise = torch.randn(settings.batch_size, generator.noise_dim, generator=sampling).to(device)
    labels = balanced_labels(settings.batch_size, generator.num_classes, sampling).to(device)
    images = generator(noise, labels)

    # Ensemble prediction with the members' BatchNorm mismatch, and the student's prediction.
    with bn_statistics.active():
        member_logits = ensemble.member_logits(images)
    bn_loss = bn_statistics.loss().to(device)
    teacher_logits = ensemble.combine(member_logits)
    student_logits = student(images)

    ce_loss = hardness_weighted_cross_entropy(teacher_logits, labels, settings.hardness)
    adv_loss = adversarial_loss(teacher_logits, student_logits, settings.temperature)
    loss = settings.ce_weight * ce_loss + settings.bn_weight * bn_loss + settings.adv_weight * adv_loss

    # Co-Boosting's hard copy: one FGSM step that raises the disagreement. Its gradient
    # comes from this forward pass, so it is taken before the generator update.
    perturbed = None
    if settings.perturb_epsilon > 0:
        disagreement = kl_disagreement(teacher_logits, student_logits, settings.temperature).mean()
        perturbed = perturb_toward_disagreement(images, disagreement, settings.perturb_epsilon)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    bank.add(images, member_logits, labels)
    if perturbed is not None:
        with torch.no_grad():
            bank.add(perturbed, ensemble.member_logits(perturbed), labels)
    return GeneratorLosses(loss.item(), ce_loss.item(), bn_loss.item(), adv_loss.item())


def student_step(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    ensemble: WeightedEnsemble,
    images: Tensor,
    member_logits: Tensor,
    settings: DataFreeSettings,
) -> float:
    """Take one distillation step of `student` toward the ensemble on banked samples.

    The loss is the temperature-softened KL divergence to the ensemble's prediction under
    its current weights, weighted toward hard samples when ``settings.hardness > 0``.
    """
    with torch.no_grad():
        teacher_logits = ensemble.combine(member_logits)
    student_logits = student(images)
    weights = student_hardness_weights(teacher_logits, student_logits, settings.hardness)
    loss = (kl_disagreement(teacher_logits, student_logits, settings.temperature) * weights).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_datafree(
    ensemble: WeightedEnsemble,
    student: nn.Module,
    settings: DataFreeSettings,
    num_classes: int,
    image_shape: Sequence[int],
    seed: int,
    device: torch.device,
) -> DataFreeReport:
    """Train `student` from `ensemble` on generated samples; return the run's figures.

    Every epoch has up to three stages.

    1. Generator stage, `generator_steps` Adam steps with the student frozen
       (:func:`generator_step`). For noise ``z`` and balanced labels ``y``, ``x = G(z, y)``
       and the generator minimises
       ``ce_weight * CE(E(x), y) + bn_weight * L_BN(x) + adv_weight * L_adv(x)``. The first
       term asks the ensemble ``E`` to predict ``y``. The second asks the members'
       BatchNorm inputs to match their running statistics. The third rewards disagreement
       of the student with the ensemble. With ``hardness > 0`` the cross-entropy weighs
       samples the ensemble is unsure of more. Every batch enters the sample bank with the
       members' logits on it. With ``perturb_epsilon > 0`` so does a copy moved by one
       signed-gradient step that raises the ensemble-student KL divergence.
    2. With ``ensemble_weight_lr > 0``, one signed-gradient step on the ensemble weights
       lowers the ensemble's cross-entropy against the generator labels over the whole bank
       (hardness-weighted like the generator's), then a projection puts the weights back on
       the simplex.
    3. Student stage, `student_steps` SGD steps (Nesterov momentum, cosine schedule over
       the whole run) on batches drawn from the bank (:func:`student_step`).
    """
    student = student.to(device)
    ensemble = ensemble.to(device).eval()
    channels, height, width = (int(size) for size in image_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + _SEED_GENERATOR_INIT)
        generator = ConditionalGenerator(
            settings.noise_dim, num_classes, (channels, height, width), settings.generator_channels
        ).to(device)
    sampling = seeded_generator(seed, _SEED_SAMPLING)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=settings.generator_lr, betas=(0.5, 0.999))
    student_optimizer = torch.optim.SGD(
        student.parameters(), lr=settings.student_lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        student_optimizer, T_max=max(1, settings.epochs * settings.student_steps)
    )
    bank = SampleBank(settings.memory_size)
    bn_statistics = BatchNormStatistics(list(ensemble.members))
    report = DataFreeReport()
    log_every = max(1, settings.epochs // 10)

    try:
        for epoch in range(settings.epochs):
            # 1. Generator stage.
            start = time.perf_counter()
            student.eval()
            generator.train()
            for _ in range(settings.generator_steps):
                losses = generator_step(
                    generator, generator_optimizer, ensemble, student, bn_statistics, bank, settings, sampling
                )
            report.generator_loss, report.ce_loss = losses.total, losses.ce
            report.bn_loss, report.adv_loss = losses.bn, losses.adv

            # 2. Co-Boosting: reweight the members on the banked samples.
            if settings.ensemble_weight_lr > 0:
                _images, member_logits, labels = bank.contents()
                hardness = label_hardness_weights(ensemble.combine(member_logits), labels, settings.hardness)
                update_ensemble_weights(
                    ensemble, member_logits, labels, settings.ensemble_weight_lr, sample_weights=hardness
                )
            report.generator_seconds += time.perf_counter() - start

            # 3. Student stage.
            start = time.perf_counter()
            student.train()
            total = 0.0
            for _ in range(settings.student_steps):
                images, member_logits, _labels = bank.sample(settings.batch_size, sampling)
                total += student_step(student, student_optimizer, ensemble, images, member_logits, settings)
                scheduler.step()
            report.student_loss = total / settings.student_steps
            report.student_seconds += time.perf_counter() - start

            if (epoch + 1) % log_every == 0 or epoch + 1 == settings.epochs:
                logger.info(
                    "Data-free epoch %s/%s: generator loss %.4f (ce %.4f, bn %.4f, adv %.4f), "
                    "student KL %.4f, %s samples in the bank",
                    epoch + 1, settings.epochs, report.generator_loss, report.ce_loss,
                    report.bn_loss, report.adv_loss, report.student_loss, len(bank),
                )
    finally:
        bn_statistics.remove()

    student.eval()
    report.num_generated = settings.epochs * settings.generator_steps * settings.batch_size
    if settings.perturb_epsilon > 0:
        report.num_generated *= 2
    report.bank_size = len(bank)
    report.ensemble_weights = [round(float(w), 6) for w in ensemble.weights]
    return report


# Strategy skeleton -------------------------------------------------------------------------


def collect_local_models(server: ServerRun, node_ids: list[int]) -> tuple[list[nn.Module], list[float]]:
    """Send the initial global model to every client and return their local models and sample counts."""
    initial = server.build_model()
    content = RecordDict(
        {ARRAYS_KEY: model_to_record(initial), CONFIG_KEY: ConfigRecord({"server-round": 1})}
    )
    with server.phase("round"):
        replies = server.send_and_collect(node_ids, TRAIN, lambda _node: content, check=server.check_model_reply)
    members, num_examples = [], []
    for index, reply in enumerate(replies):
        member = server.build_model(seed_offset=index + 1)
        load_model_record(member, reply.content.array_records[ARRAYS_KEY])
        members.append(member.eval())
        num_examples.append(float(reply.content.metric_records[METRICS_KEY][NUM_EXAMPLES]))
    return members, num_examples


def average_models(models: Sequence[nn.Module], weights: Sequence[float]) -> dict[str, Tensor]:
    """Return the `weights`-weighted average of the models' state dicts (:func:`average_state_dicts`)."""
    return average_state_dicts([model.state_dict() for model in models], list(weights))


class DataFreeStrategy(FedLabStrategy):
    """One round of local training, then data-free distillation of the ensemble on the server.

    The student starts from :func:`average_models` of the local models, weighted by their
    sample counts, or from fresh seeded weights (``datafree-student-init``).
    """

    name = "data-free"

    @abstractmethod
    def settings(self) -> DataFreeSettings:
        """Return the distillation settings of this method, read from the run config."""

    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        settings = self.settings()
        members, num_examples = collect_local_models(server, node_ids)
        ensemble = WeightedEnsemble(members, output=settings.ensemble_output)
        student = server.build_model()
        if self.config.datafree_student_init == "average":
            student.load_state_dict(average_models(members, num_examples))
            average_accuracy = server.evaluate(student)
            logger.info("%s: student starts from the average of the local models, test accuracy %.4f",
                        self.name, average_accuracy)
        else:
            average_accuracy = None
        train = server.data.train
        with server.phase("server_training"):
            report = train_datafree(
                ensemble, student, settings, train.num_classes, train.image_shape, self.config.seed, server.device
            )

        accuracy = server.evaluate(student)
        ensemble_accuracy = server.evaluate(ensemble)
        logger.info(
            "%s: global model test accuracy %.4f (ensemble of %s local models %.4f) after %.0f s "
            "of generator and %.0f s of student training",
            self.name, accuracy, len(members), ensemble_accuracy,
            report.generator_seconds, report.student_seconds,
        )
        return StrategyResult(
            model=student,
            test_accuracy=accuracy,
            extra={
                "ensemble_size": len(members),
                "ensemble_test_accuracy": ensemble_accuracy,
                "student_init": self.config.datafree_student_init,
                "student_init_test_accuracy": average_accuracy,
                "datafree": report.to_json(),
            },
        )

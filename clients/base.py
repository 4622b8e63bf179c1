"""Interface for client-side distillers and the distillates they upload."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fedlab.config import RunConfig
from fedlab.models import Classifier
from fedlab.registry import Registry


@dataclass(frozen=True)
class Distillates:
    """Synthetic data that one client uploads in place of its model.

    Parameters
    ----------
    latents : Tensor
        float32, M x c x h x w autoencoder latents, one per synthetic image.
    soft_labels : Tensor
        float32, M x num_classes class distributions predicted by the client model.
    class_ids : Tensor
        int64, length M, the class each latent was synthesised for.
    timings : dict[str, float]
        Wall-clock seconds spent per stage, keyed by stage name.

    Raises
    ------
    ValueError
        If the dtypes, dimensions or lengths of the three tensors do not match.
    """

    latents: Tensor
    soft_labels: Tensor
    class_ids: Tensor
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latents.dtype != torch.float32 or self.latents.dim() != 4:
            raise ValueError(
                f"latents must be a float32 M x c x h x w tensor, got dtype {self.latents.dtype} "
                f"with shape {tuple(self.latents.shape)}; convert with .float() and keep 4 dims"
            )
        if self.soft_labels.dtype != torch.float32 or self.soft_labels.dim() != 2:
            raise ValueError(
                f"soft_labels must be a float32 M x num_classes tensor, got dtype "
                f"{self.soft_labels.dtype} with shape {tuple(self.soft_labels.shape)}"
            )
        if self.class_ids.dtype != torch.int64 or self.class_ids.dim() != 1:
            raise ValueError(
                f"class_ids must be a 1-D int64 tensor, got dtype {self.class_ids.dtype} "
                f"with shape {tuple(self.class_ids.shape)}"
            )
        lengths = {len(self.latents), len(self.soft_labels), len(self.class_ids)}
        if len(lengths) != 1:
            raise ValueError(
                f"latents, soft_labels and class_ids must have the same length M, got "
                f"{len(self.latents)}, {len(self.soft_labels)} and {len(self.class_ids)}"
            )

    def __len__(self) -> int:
        return len(self.class_ids)


class Distiller(ABC):
    """Client-side component that turns local data into uploadable distillates."""

    @abstractmethod
    def distill(
        self,
        model: Classifier,
        images: Tensor,
        labels: Tensor,
        autoencoder: nn.Module,
        num_classes: int,
        generator: torch.Generator,
    ) -> Distillates:
        """Distil the local data set into synthetic latents with soft labels.

        Parameters
        ----------
        model : Classifier
            Classifier trained on the local data; it is not modified.
        images : Tensor
            float32 N x C x H x W local images in [0, 1].
        labels : Tensor
            int64 class labels of length N.
        autoencoder : diffusers.AutoencoderKL
            Frozen autoencoder that maps images to the uploaded latents and back.
        num_classes : int
            Number of classes of the task, which sets the width of the soft labels.
        generator : torch.Generator
            Seeded generator driving every random choice, so equal seeds give equal output.

        Returns
        -------
        Distillates
        """

    @classmethod
    def from_run_config(cls, config: RunConfig) -> Distiller:
        """Build the distiller from a run config; each distiller maps its own keys."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_run_config")


DISTILLERS: Registry[type[Distiller]] = Registry("distiller")
"""Distiller classes by name; each is constructed with its own frozen params dataclass."""

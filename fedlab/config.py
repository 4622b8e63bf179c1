"""Typed run configuration, parsed once from the Flower run config and validated before any work.

Every key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` maps to one field of
:class:`RunConfig` (kebab-case in the run config, snake_case here). Unknown keys, wrong
types, unknown registry names and out-of-range numbers raise :class:`ConfigError` naming
the key, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

LatentDtype = Literal["float16", "float32"]
LatentNoise = Literal["none", "gaussian", "laplace"]
FeatureSkew = Literal["none", "rotation", "noise"]
FeatureSkewLevels = Literal["even", "random"]
EnsembleOutput = Literal["logits", "probabilities"]
StudentInit = Literal["average", "random"]
AutoencoderDelivery = Literal["message", "local"]

# Values of the run-config key ``autoencoder`` that name a source rather than a folder.
AUTOENCODER_SOURCES = ("pretrain", "random")


class ConfigError(ValueError):
    """Invalid run-config value; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """All settings of one fedlab run; defaults match ``[tool.flwr.app.config]``."""

    # Method and run
    strategy: str = "fedsd2c"
    seed: int = 0
    num_clients: int = 10
    num_server_rounds: int = 1
    min_replies: int = 1
    reply_timeout: float = 3600.0
    node_wait_seconds: float = 120.0
    # Messages kept in flight in a simulation: 0 chooses from the Ray cluster's CPUs, -1 sends
    # one to every client at once.
    max_in_flight: int = 0
    output_dir: str = "outputs"
    run_name: str = ""

    # Data
    dataset: str = "mnist"
    data_root: str = ""
    image_size: int = 0
    test_fraction: float = 0.2
    public_fraction: float = 0.1
    max_pool_samples: int = 0
    partitioner: str = "dirichlet"
    alpha: float = 0.1
    min_partition_size: int = 10
    shards_per_client: int = 2
    quantity_sigma: float = 1.0
    quantity_exponent: float = 1.5
    feature_skew: FeatureSkew = "none"
    feature_skew_strength: float = 0.0
    feature_skew_levels: FeatureSkewLevels = "even"

    # Model
    model: str = "convnet"
    model_width: int = 128
    model_depth: int = 3

    # Local training (every strategy)
    local_epochs: int = 10
    local_lr: float = 0.01
    local_batch_size: int = 32
    local_weight_decay: float = 5e-4

    # Public autoencoder
    autoencoder: str = "pretrain"
    autoencoder_delivery: AutoencoderDelivery = "message"
    ae_downsample: int = 4
    ae_latent_channels: int = 4
    ae_base_channels: int = 8
    ae_pretrain_epochs: int = 20
    ae_cache_dir: str = ""

    # FedSD2C distillation
    distiller: str = "fedsd2c"
    ipc: int = 30
    mipc: int = 100
    num_crops: int = 5
    crop_scale_min: float = 0.5
    amplitude_mix: float = 0.8
    synthesis_iterations: int = 30
    synthesis_lr: float = 0.3
    soft_label_temperature: float = 1.0
    latent_dtype: LatentDtype = "float16"

    # Server training on distillates
    server_epochs: int = 30
    server_lr: float = 0.01
    server_batch_size: int = 64
    distill_temperature: float = 1.0

    # Upload checks, injected faults and privacy
    max_payload_bytes: int = 67_108_864
    fail_fraction: float = 0.0
    late_fraction: float = 0.0
    late_seconds: float = 30.0
    fault_plan: str = ""
    # Noise added to uploaded latents. The scale is relative to the standard deviation of
    # all the latents one client uploads: the Gaussian's standard deviation, or the Laplace
    # scale parameter b, is latent_noise_scale times that standard deviation.
    latent_noise: LatentNoise = "none"
    latent_noise_scale: float = 0.0
    # PSNR and SSIM of each decoded distillate against its nearest same-class local image.
    privacy_report: bool = True

    # Data-free distillation (DENSE, Co-Boosting)
    datafree_epochs: int = 20
    datafree_generator_steps: int = 5
    datafree_student_steps: int = 20
    datafree_batch_size: int = 64
    datafree_noise_dim: int = 64
    datafree_generator_channels: int = 32
    datafree_generator_lr: float = 0.01
    datafree_student_lr: float = 0.01
    datafree_temperature: float = 1.0
    datafree_ce_weight: float = 1.0
    datafree_bn_weight: float = 10.0
    datafree_adv_weight: float = 1.0
    datafree_memory_size: int = 10_000
    datafree_ensemble_output: EnsembleOutput = "probabilities"
    datafree_student_init: StudentInit = "average"
    coboosting_hardness: float = 1.0
    coboosting_epsilon: float = 0.03
    coboosting_weight_lr: float = 0.01

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config from a Flower run config (kebab-case keys).

        Raises
        ------
        ConfigError
            On an unknown key, a value of the wrong type, or an invalid value.
        """
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            field = by_key.get(key)
            if field is None:
                raise ConfigError(
                    f"unknown run-config key {key!r}; valid keys: {', '.join(sorted(by_key))}"
                )
            values[field.name] = _coerce(key, raw, hints[field.name])
        config = cls(**values)
        config.validate()
        return config

    def to_run_config(self) -> dict[str, Any]:
        """Return the config as kebab-case run-config keys (the form saved with results)."""
        return {name.replace("_", "-"): value for name, value in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a validated copy with some fields changed."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every value against its range and every name against its registry."""
        from fedlab import registries  # imported late: the registries import the components

        registries.check_name("strategy", self.strategy)
        registries.check_name("dataset", self.dataset)
        registries.check_name("model", self.model)
        registries.check_name("partitioner", self.partitioner)
        registries.check_name("distiller", self.distiller)

        _check(self, "num_clients", self.num_clients >= 1, "at least 1")
        _check(self, "num_server_rounds", self.num_server_rounds >= 1, "at least 1")
        _check(self, "seed", self.seed >= 0, "0 or more")
        _check(self, "min_replies", self.min_replies >= 1, "at least 1")
        _check(self, "min_replies", self.min_replies <= self.num_clients,
               f"at most num-clients ({self.num_clients}), or no run could ever get enough replies")
        _check(self, "output_dir", bool(self.output_dir.strip()),
               "a folder path; the default is 'outputs'")
        _check(self, "run_name",
               self.run_name == "" or (
                   self.run_name not in (".", "..") and not any(sep in self.run_name for sep in "/\\")
               ),
               "empty (a name made of time, strategy and run id) or one folder name without "
               "'/' inside output-dir")
        from fedlab.data.datasets import PACKAGED_DATASETS  # imported late, as the registries are

        _check(self, "data_root", self.dataset in PACKAGED_DATASETS or bool(self.data_root.strip()),
               f"the local folder that holds dataset {self.dataset!r}, which is read from files "
               f"(only {', '.join(sorted(PACKAGED_DATASETS))} ship with installed packages)")
        _check(self, "reply_timeout", self.reply_timeout > 0, "positive (seconds)")
        _check(self, "node_wait_seconds", self.node_wait_seconds >= 0, "0 or more (seconds)")
        _check(self, "max_in_flight", self.max_in_flight >= -1,
               "-1 (no limit), 0 (automatic) or a positive number of messages")
        _check(self, "image_size", self.image_size >= 0, "0 (native size) or a positive size")
        _check(self, "test_fraction", 0 <= self.test_fraction < 1, "in [0, 1)")
        _check(self, "public_fraction", 0 <= self.public_fraction < 1, "in [0, 1)")
        _check(
            self,
            "public_fraction",
            self.test_fraction + self.public_fraction < 1,
            f"such that test-fraction + public-fraction < 1 (test-fraction is {self.test_fraction})",
        )
        _check(self, "max_pool_samples", self.max_pool_samples >= 0, "0 (no cap) or positive")
        _check(self, "alpha", self.alpha > 0 and math.isfinite(self.alpha), "a finite number > 0")
        _check(self, "min_partition_size", self.min_partition_size >= 0, "0 or more")
        _check(self, "shards_per_client", self.shards_per_client >= 1, "at least 1")
        from fedlab.data.datasets import CLASS_COUNTS

        # Only the upper bound is checked here. A pool cut by max-pool-samples may lack classes
        # and need fewer holders, so the partitioner checks the lower bound on the labels.
        classes = CLASS_COUNTS.get(self.dataset)
        if self.partitioner == "shards" and classes is not None:
            _check(self, "shards_per_client", self.shards_per_client <= classes,
                   f"at most {classes}, the number of classes of dataset {self.dataset!r}")
        _check(self, "quantity_sigma",
               math.isfinite(self.quantity_sigma) and self.quantity_sigma >= 0,
               "a finite number >= 0 (0 gives equal client sizes, 1 a strong size skew)")
        _check(self, "quantity_exponent",
               math.isfinite(self.quantity_exponent) and self.quantity_exponent > 0,
               "a finite number > 0 (smaller values give a heavier tail of client sizes)")
        _check(self, "feature_skew", self.feature_skew in get_args(FeatureSkew),
               f"one of {', '.join(get_args(FeatureSkew))}")
        _check(self, "feature_skew_strength",
               math.isfinite(self.feature_skew_strength) and self.feature_skew_strength >= 0,
               "a finite number >= 0 (the maximum rotation in degrees or noise std)")
        _check(self, "feature_skew_strength",
               self.feature_skew != "rotation" or self.feature_skew_strength <= 360,
               "at most 360 degrees when feature-skew is 'rotation'")
        _check(self, "feature_skew_levels", self.feature_skew_levels in get_args(FeatureSkewLevels),
               f"one of {', '.join(get_args(FeatureSkewLevels))}")
        _check(self, "model_width", self.model_width >= 1, "at least 1")
        _check(self, "model_depth", self.model_depth >= 1, "at least 1")
        _check(self, "local_epochs", self.local_epochs >= 1, "at least 1")
        _check(self, "local_lr", self.local_lr > 0, "positive")
        _check(self, "local_batch_size", self.local_batch_size >= 1, "at least 1")
        _check(self, "local_weight_decay", self.local_weight_decay >= 0, "0 or more")
        _check(
            self,
            "ae_downsample",
            self.ae_downsample >= 1 and self.ae_downsample & (self.ae_downsample - 1) == 0,
            "a power of two (1, 2, 4, 8, ...)",
        )
        _check(self, "ae_latent_channels", self.ae_latent_channels >= 1, "at least 1")
        _check(self, "ae_base_channels", self.ae_base_channels >= 1, "at least 1")
        _check(self, "ae_pretrain_epochs", self.ae_pretrain_epochs >= 1, "at least 1")
        _check(self, "ipc", self.ipc >= 1, "at least 1")
        _check(self, "mipc", self.mipc >= self.ipc, f"at least ipc ({self.ipc})")
        _check(self, "num_crops", self.num_crops >= 1, "at least 1")
        _check(self, "crop_scale_min", 0 < self.crop_scale_min <= 1, "in (0, 1]")
        _check(self, "amplitude_mix", 0 <= self.amplitude_mix <= 1, "in [0, 1]")
        _check(self, "synthesis_iterations", self.synthesis_iterations >= 0, "0 or more")
        _check(self, "synthesis_lr", self.synthesis_lr > 0, "positive")
        _check(self, "soft_label_temperature", self.soft_label_temperature > 0, "positive")
        _check(self, "latent_dtype", self.latent_dtype in get_args(LatentDtype),
               f"one of {', '.join(get_args(LatentDtype))}")
        _check(self, "server_epochs", self.server_epochs >= 1, "at least 1")
        _check(self, "server_lr", self.server_lr > 0, "positive")
        _check(self, "server_batch_size", self.server_batch_size >= 1, "at least 1")
        _check(self, "distill_temperature", self.distill_temperature > 0, "positive")
        _check(self, "max_payload_bytes", self.max_payload_bytes >= 1, "at least 1 (bytes)")
        _check(self, "fail_fraction", 0 <= self.fail_fraction <= 1, "in [0, 1]")
        _check(self, "late_fraction", 0 <= self.late_fraction <= 1, "in [0, 1]")
        _check(
            self,
            "late_fraction",
            self.fail_fraction + self.late_fraction <= 1,
            f"such that fail-fraction + late-fraction <= 1 (fail-fraction is {self.fail_fraction})",
        )
        _check(self, "late_seconds", self.late_seconds >= 0, "0 or more (seconds)")
        _check(self, "latent_noise", self.latent_noise in get_args(LatentNoise),
               f"one of {', '.join(get_args(LatentNoise))}")
        _check(self, "latent_noise_scale", self.latent_noise_scale >= 0 and math.isfinite(self.latent_noise_scale),
               "a finite number >= 0")
        _check(self, "datafree_epochs", self.datafree_epochs >= 1, "at least 1")
        _check(self, "datafree_generator_steps", self.datafree_generator_steps >= 1, "at least 1")
        _check(self, "datafree_student_steps", self.datafree_student_steps >= 1, "at least 1")
        _check(self, "datafree_batch_size", self.datafree_batch_size >= 2,
               "at least 2 (BatchNorm statistics need two samples)")
        _check(self, "datafree_noise_dim", self.datafree_noise_dim >= 1, "at least 1")
        _check(self, "datafree_generator_channels", self.datafree_generator_channels >= 1, "at least 1")
        for name in ("datafree_generator_lr", "datafree_student_lr", "datafree_temperature"):
            value = getattr(self, name)
            _check(self, name, value > 0 and math.isfinite(value), "a finite number > 0")
        for name in ("datafree_ce_weight", "datafree_bn_weight", "datafree_adv_weight",
                     "coboosting_hardness", "coboosting_weight_lr"):
            value = getattr(self, name)
            _check(self, name, value >= 0 and math.isfinite(value), "a finite number >= 0")
        _check(self, "datafree_memory_size", self.datafree_memory_size >= self.datafree_batch_size,
               f"at least datafree-batch-size ({self.datafree_batch_size})")
        _check(self, "datafree_ensemble_output", self.datafree_ensemble_output in get_args(EnsembleOutput),
               f"one of {', '.join(get_args(EnsembleOutput))}")
        _check(self, "datafree_student_init", self.datafree_student_init in get_args(StudentInit),
               f"one of {', '.join(get_args(StudentInit))}")
        _check(self, "coboosting_epsilon", 0 <= self.coboosting_epsilon <= 1,
               "in [0, 1] (images are in [0, 1])")
        from fedlab.faults import parse_fault_plan  # imported late: faults reads RunConfig

        plan = parse_fault_plan(self.fault_plan, self.num_clients)
        distillate_only = sorted({k for k in plan.values() if k in ("bad-class-id", "bad-soft-labels")})
        if distillate_only and self.strategy != "fedsd2c":
            raise ConfigError(
                f"invalid run-config value fault-plan={self.fault_plan!r}: {', '.join(distillate_only)} "
                f"corrupts distillates, which strategy={self.strategy!r} does not upload; "
                "use it with strategy='fedsd2c'"
            )
        if self.autoencoder not in AUTOENCODER_SOURCES and not self.autoencoder.strip():
            raise ConfigError(
                "run-config key 'autoencoder' is empty; use 'pretrain', 'random' or the path of "
                "a saved diffusers AutoencoderKL folder"
            )
        _check(self, "autoencoder_delivery", self.autoencoder_delivery in get_args(AutoencoderDelivery),
               f"one of {', '.join(get_args(AutoencoderDelivery))}")
        _check(self, "autoencoder_delivery",
               self.autoencoder_delivery != "local" or self.autoencoder != "random",
               "'message' when autoencoder is 'random', because a random autoencoder has no saved "
               "folder that clients could load; or keep 'local' with autoencoder='pretrain' or a "
               "saved folder")


def _check(config: RunConfig, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        key = name.replace("_", "-")
        raise ConfigError(
            f"invalid run-config value {key}={getattr(config, name)!r}: must be {allowed}"
        )


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert a run-config value to the field's type, rejecting lossy conversions."""
    if typing.get_origin(hint) is Literal:
        hint = str
    if hint is bool:
        if isinstance(raw, bool):
            return raw
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif hint is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
    elif hint is str:
        if isinstance(raw, str):
            return raw
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(
        f"invalid run-config value {key}={raw!r}: expected {type_name}, got {type(raw).__name__}"
        + (" (quote strings: key='value')" if hint is str else "")
    )


def read_saved_run_config(path: str | Path) -> dict[str, Any]:
    """Read the run config saved with a run: `path` is its run folder or its ``config.json``.

    Every ``fedlab run`` saves ``{"run_config": {...}, "seed": ...}`` to ``config.json`` in
    its run folder; this returns the ``run_config`` mapping (kebab-case keys).

    Raises
    ------
    ConfigError
        When the file is missing, is not that JSON object, or names keys that
        :class:`RunConfig` does not have.
    """
    path = Path(path).expanduser()
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise ConfigError(
            f"saved run config {str(config_path)!r} not found; pass the folder of a fedlab run "
            "(outputs/<run-id>) or its config.json"
        )
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"saved run config {str(config_path)!r} is not valid JSON: {err}") from err
    run_config = saved.get("run_config") if isinstance(saved, dict) else None
    if not isinstance(run_config, dict):
        raise ConfigError(
            f"saved run config {str(config_path)!r} has no 'run_config' object; it is not a "
            "config.json written by fedlab run"
        )
    known = {f.name.replace("_", "-") for f in fields(RunConfig)}
    unknown = sorted(set(run_config) - known)
    if unknown:
        raise ConfigError(
            f"saved run config {str(config_path)!r} has keys this fedlab version does not know: "
            f"{', '.join(unknown)}; run the version that wrote it, or remove them from a copy"
        )
    return dict(run_config)

"""Benchmark grids: named TOML files in ``benchmarks/configs/`` expanded into cells.

A grid is the product of its axes: methods x datasets x models x partitions x client counts x
seeds. Methods, datasets and models are tables of run-config overrides, so a strategy added to
the registry needs only a new ``[[methods]]`` entry. The file format::

    description = "one line shown by --list"
    clients = [10]            # num-clients values
    seeds = [0, 1, 2]

    [run-config]              # overrides every cell sets
    model-width = 32

    [federation-config]       # optional: where clients run, e.g. client-resources-num-gpus = 0.5

    [[methods]]
    name = "FedAvg 10 rounds"                    # the label in tables and plots
    run-config = { strategy = "fedavg", num-server-rounds = 10 }
    estimate-seconds = { mnist = 60, digits = 45 }   # or one number; per cell at 10 clients
    by-dataset = { digits = { local-epochs = 8 } }   # optional: this method's keys for one dataset
    pretrains-autoencoder = false                # true adds the dataset's autoencoder-seconds once

    [[datasets]]
    name = "digits"                              # a registered dataset id
    run-config = { ae-downsample = 2 }
    autoencoder-seconds = 40
    needs-data-root = false                      # true: the sweep refuses to start without data-root

    [[models]]                                   # optional; default: the model of [run-config]
    name = "ResNet-18"
    run-config = { model = "resnet18" }

    [[partitions]]
    partitioner = "dirichlet"
    alpha = [0.1, 0.5]                           # a list expands into one partition per value
    label = "alpha={alpha}"                      # optional; default: partitioner and its keys

When keys collide, later sources win: grid, dataset, model, method, the method's by-dataset
entry, partition, then the client count and seed of the cell.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.suite import PATH_KEYS, PROJECT_DIR, Cell

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REFERENCE_CLIENTS = 10

COORDINATES = ("method", "strategy", "dataset", "model", "partition", "partitioner", "alpha", "num_clients", "seed")


class GridError(ValueError):
    """Missing or malformed grid file, or an unknown key in it; the message names the file and entry."""


@dataclass(frozen=True)
class Method:
    name: str
    run_config: dict[str, Any]
    estimate_seconds: float | dict[str, float] = 0.0
    pretrains_autoencoder: bool = False
    by_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)

    def estimate_for(self, dataset: str) -> float:
        if isinstance(self.estimate_seconds, Mapping):
            return float(self.estimate_seconds.get(dataset, 0.0))
        return float(self.estimate_seconds)


@dataclass(frozen=True)
class Dataset:
    name: str
    run_config: dict[str, Any]
    autoencoder_seconds: float = 0.0
    needs_data_root: bool = False


@dataclass(frozen=True)
class Model:
    name: str
    run_config: dict[str, Any]


@dataclass(frozen=True)
class Partition:
    label: str
    run_config: dict[str, Any]


@dataclass(frozen=True)
class Grid:
    """A parsed grid file. :meth:`cells` expands it; :meth:`restrict` changes its axes."""

    name: str
    description: str
    run_config: dict[str, Any]
    methods: tuple[Method, ...]
    datasets: tuple[Dataset, ...]
    models: tuple[Model, ...]
    partitions: tuple[Partition, ...]
    clients: tuple[int, ...]
    seeds: tuple[int, ...]
    federation_config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def restrict(
        self,
        *,
        clients: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
        methods: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
    ) -> Grid:
        """Return the grid with other client counts or seeds, or a subset of methods or datasets.

        Method and dataset names match case-insensitively.

        Raises
        ------
        GridError
            When a name matches no method or dataset of the grid, or a count is below 1.
        """
        changes: dict[str, Any] = {}
        if clients:
            if any(count < 1 for count in clients):
                raise GridError(f"client counts must be at least 1, got {list(clients)}")
            changes["clients"] = tuple(dict.fromkeys(clients))
        if seeds:
            changes["seeds"] = tuple(dict.fromkeys(seeds))
        if methods:
            changes["methods"] = _select(self.methods, methods, "method", self.name)
        if datasets:
            changes["datasets"] = _select(self.datasets, datasets, "dataset", self.name)
        return dataclasses.replace(self, **changes)

    def cells(self, extra_run_config: Mapping[str, Any] | None = None) -> list[Cell]:
        """Expand the grid into cells, seed by seed, so that a partial sweep covers every method.

        `extra_run_config` is applied to every cell after the grid's own keys (for example
        ``data-root``), and becomes part of each cell's identity.
        """
        cells = []
        for seed, dataset, model, clients, partition, method in itertools.product(
            self.seeds, self.datasets, self.models, self.clients, self.partitions, self.methods
        ):
            run_config = typed_run_config({
                **self.run_config,
                "dataset": dataset.name,
                **dataset.run_config,
                **model.run_config,
                **method.run_config,
                **method.by_dataset.get(dataset.name, {}),
                **partition.run_config,
                **(extra_run_config or {}),
                "num-clients": clients,
                "seed": seed,
            })
            coordinates = {
                "method": method.name,
                "strategy": run_config.get("strategy"),
                "dataset": dataset.name,
                "model": model.name,
                "partition": partition.label,
                "partitioner": run_config.get("partitioner"),
                "alpha": partition.run_config.get("alpha"),
                "num_clients": clients,
                "seed": seed,
            }
            estimate = method.estimate_for(dataset.name) * (0.5 + 0.5 * clients / REFERENCE_CLIENTS)
            title = " | ".join(
                [method.name, dataset.name, *([model.name] if len(self.models) > 1 else []),
                 partition.label, f"{clients} clients", f"seed {seed}"]
            )
            cells.append(Cell(coordinates=coordinates, run_config=run_config, estimate_seconds=estimate, title=title))
        return cells

    def dataset(self, name: str) -> Dataset:
        return next(entry for entry in self.datasets if entry.name == name)

    def method(self, name: str) -> Method:
        return next(entry for entry in self.methods if entry.name == name)


def _select(entries: Sequence[Any], names: Sequence[str], kind: str, grid: str) -> tuple[Any, ...]:
    by_name = {entry.name.lower(): entry for entry in entries}
    unknown = [name for name in names if name.lower() not in by_name]
    if unknown:
        raise GridError(
            f"grid {grid!r} has no {kind} {', '.join(map(repr, unknown))}; its {kind}s are "
            f"{', '.join(repr(entry.name) for entry in entries)}"
        )
    wanted = {name.lower() for name in names}
    return tuple(entry for entry in entries if entry.name.lower() in wanted)


# ---------------------------------------------------------------------------
# Validation against the app's run config
# ---------------------------------------------------------------------------


def typed_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Convert integers to floats for the keys that :class:`fedlab.config.RunConfig` types as float.

    TOML writes ``alpha = 1`` as an integer, while `fedlab run` reads it as 1.0. Converting
    here gives both spellings one cell id, without the registry checks of :func:`validate_cells`,
    so ids stay stable even when a cell is invalid. Other keys and values are left as they are.
    """
    hints = _run_config_hints()
    typed = {}
    for key, value in run_config.items():
        if hints.get(key) is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        typed[key] = value
    return typed


@functools.lru_cache(maxsize=1)
def _run_config_hints() -> dict[str, Any]:
    from fedlab.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    return {field.name.replace("_", "-"): hints[field.name] for field in dataclasses.fields(RunConfig)}


def validate_cells(cells: Sequence[Cell], app_dir: Path = PROJECT_DIR) -> tuple[list[Cell], list[tuple[Cell, str]]]:
    """Check every cell's run config with :class:`fedlab.config.RunConfig`, as `fedlab run` would.

    Returns the valid cells and the invalid ones with their error messages. An empty
    ``data-root`` is left to :func:`benchmarks.heterogeneity.check_data_roots`, which names
    the dataset once instead of failing every cell, and lets ``--dry-run`` list the cells of
    a grid whose data is not on this machine.
    """
    from fedlab.cli import app_defaults
    from fedlab.config import ConfigError, RunConfig

    defaults = app_defaults(app_dir)
    valid, invalid = [], []
    for cell in cells:
        merged = {**defaults, **cell.run_config}
        if not str(merged.get("data-root", "")).strip():
            merged["data-root"] = "<data-root>"
        try:
            RunConfig.from_run_config(merged)
        except ConfigError as err:
            invalid.append((cell, str(err)))
        else:
            valid.append(cell)
    return valid, invalid


# ---------------------------------------------------------------------------
# Loading grid files
# ---------------------------------------------------------------------------


def grid_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Return the names of the grid files in `config_dir`, sorted."""
    return sorted(path.stem for path in config_dir.glob("*.toml"))


def grid_path(name: str, config_dir: Path = CONFIG_DIR) -> Path:
    """Return the file of grid `name`, or `name` itself when it is a path to a TOML file."""
    candidate = Path(name)
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    path = config_dir / f"{name}.toml"
    if not path.is_file():
        raise GridError(f"unknown grid {name!r}; named grids: {', '.join(grid_names(config_dir))}, or pass a .toml path")
    return path


def load_grid(name: str, config_dir: Path = CONFIG_DIR) -> Grid:
    """Read and check a grid file by name (``benchmarks/configs/<name>.toml``) or path."""
    path = grid_path(name, config_dir)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: invalid TOML: {err}") from err
    return parse_grid(data, name=path.stem, source=str(path))


_TOP_KEYS = {
    "description", "clients", "seeds", "run-config", "federation-config", "methods", "datasets", "models", "partitions",
}


def parse_grid(data: Mapping[str, Any], name: str, source: str = "<grid>") -> Grid:
    """Build a :class:`Grid` from parsed TOML, checking every key and type."""
    _check_keys(data, _TOP_KEYS, source)
    for required in ("methods", "datasets", "partitions", "clients", "seeds"):
        if not data.get(required):
            raise GridError(f"{source}: {required!r} is missing or empty")
    base = _run_config(data.get("run-config", {}), f"{source} [run-config]")
    methods = tuple(_method(entry, f"{source} methods[{i}]") for i, entry in enumerate(_tables(data, "methods", source)))
    datasets = tuple(_dataset(entry, f"{source} datasets[{i}]") for i, entry in enumerate(_tables(data, "datasets", source)))
    if "models" in data:
        models = tuple(_model(entry, f"{source} models[{i}]") for i, entry in enumerate(_tables(data, "models", source)))
    else:
        models = (Model(name=str(base.get("model", "convnet")), run_config={}),)
    partitions = tuple(
        partition
        for i, entry in enumerate(_tables(data, "partitions", source))
        for partition in _partitions(entry, f"{source} partitions[{i}]")
    )
    dataset_names = {dataset.name for dataset in datasets}
    for method in methods:
        unknown = sorted(set(method.by_dataset) - dataset_names)
        if unknown:
            raise GridError(
                f"{source}: method {method.name!r} has by-dataset entries for {', '.join(map(repr, unknown))}, "
                f"which the grid does not run; use one of {', '.join(map(repr, sorted(dataset_names)))}"
            )
    for kind, entries in (("method", methods), ("dataset", datasets), ("model", models), ("partition", partitions)):
        names = [getattr(entry, "name", None) or entry.label for entry in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GridError(f"{source}: {kind} names must be unique, {', '.join(map(repr, duplicates))} repeat")
    return Grid(
        name=name,
        description=str(data.get("description", "")),
        run_config=base,
        methods=methods,
        datasets=datasets,
        models=models,
        partitions=partitions,
        clients=_int_list(data["clients"], f"{source} clients", minimum=1),
        seeds=_int_list(data["seeds"], f"{source} seeds", minimum=0),
        federation_config=_federation_config(data.get("federation-config", {}), f"{source} [federation-config]"),
    )


def _method(entry: Mapping[str, Any], where: str) -> Method:
    _check_keys(entry, {"name", "run-config", "estimate-seconds", "pretrains-autoencoder", "by-dataset"}, where)
    run_config = _run_config(entry.get("run-config", {}), where)
    by_dataset = entry.get("by-dataset", {})
    if not isinstance(by_dataset, Mapping):
        raise GridError(f"{where}: by-dataset must be a table of dataset names to run-config tables")
    by_dataset = {str(key): _run_config(value, f"{where} by-dataset.{key}") for key, value in by_dataset.items()}
    if "strategy" not in run_config:
        raise GridError(f"{where}: run-config must set 'strategy'")
    estimate = entry.get("estimate-seconds", 0.0)
    if isinstance(estimate, Mapping):
        estimate = {str(key): _seconds(value, f"{where} estimate-seconds.{key}") for key, value in estimate.items()}
    else:
        estimate = _seconds(estimate, f"{where} estimate-seconds")
    return Method(
        name=_name(entry, where),
        run_config=run_config,
        estimate_seconds=estimate,
        pretrains_autoencoder=_bool(entry.get("pretrains-autoencoder", False), f"{where} pretrains-autoencoder"),
        by_dataset=by_dataset,
    )


def _dataset(entry: Mapping[str, Any], where: str) -> Dataset:
    _check_keys(entry, {"name", "run-config", "autoencoder-seconds", "needs-data-root"}, where)
    run_config = _run_config(entry.get("run-config", {}), where)
    if "dataset" in run_config:
        raise GridError(f"{where}: set the dataset with 'name', not in run-config")
    return Dataset(
        name=_name(entry, where),
        run_config=run_config,
        autoencoder_seconds=_seconds(entry.get("autoencoder-seconds", 0.0), f"{where} autoencoder-seconds"),
        needs_data_root=_bool(entry.get("needs-data-root", False), f"{where} needs-data-root"),
    )


def _model(entry: Mapping[str, Any], where: str) -> Model:
    _check_keys(entry, {"name", "run-config"}, where)
    run_config = _run_config(entry.get("run-config", {}), where)
    if "model" not in run_config:
        raise GridError(f"{where}: run-config must set 'model'")
    return Model(name=_name(entry, where), run_config=run_config)


def _partitions(entry: Mapping[str, Any], where: str) -> list[Partition]:
    """Expand one ``[[partitions]]`` entry: every list value is an axis of its own."""
    entry = dict(entry)
    template = entry.pop("label", None)
    if template is not None and not isinstance(template, str):
        raise GridError(f"{where}: label must be a string, got {template!r}")
    if "partitioner" not in entry:
        raise GridError(f"{where}: 'partitioner' is missing")
    axes = {key: value if isinstance(value, list) else [value] for key, value in entry.items()}
    for key, values in axes.items():
        if not values:
            raise GridError(f"{where}: {key} is an empty list")
        _run_config({key: values[0]}, where)
    partitions = []
    for combination in itertools.product(*axes.values()):
        run_config = dict(zip(axes, combination, strict=True))
        _run_config(run_config, where)
        if template is not None:
            try:
                label = template.format(**run_config)
            except (KeyError, IndexError, ValueError) as err:
                raise GridError(f"{where}: label {template!r} names a key the entry does not set: {err}") from err
        else:
            extra = [f"{key}={value}" for key, value in run_config.items() if key != "partitioner"]
            label = " ".join([str(run_config["partitioner"]), *extra])
        partitions.append(Partition(label=label, run_config=run_config))
    return partitions


def _run_config(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise GridError(f"{where}: run-config must be a table of key = value, got {value!r}")
    for key, item in value.items():
        if key in PATH_KEYS:
            raise GridError(f"{where}: {key!r} is set by the sweep (--out, --runs-dir, --ae-cache-dir), not the grid")
        if key == "num-clients" or key == "seed":
            raise GridError(f"{where}: set {key!r} with the grid's 'clients' and 'seeds' lists")
        if not isinstance(item, (str, int, float, bool)) or (isinstance(item, float) and not math.isfinite(item)):
            raise GridError(f"{where}: {key} = {item!r} must be a string, integer, finite float or boolean")
    return dict(value)


def _federation_config(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise GridError(f"{where}: must be a table of key = value, got {value!r}")
    if "num-supernodes" in value:
        raise GridError(f"{where}: 'num-supernodes' is set from the grid's 'clients', so remove it")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise GridError(f"{where}: {key} = {item!r} must be a string, number or boolean")
    return dict(value)


def _tables(data: Mapping[str, Any], key: str, source: str) -> list[Mapping[str, Any]]:
    entries = data[key]
    if not isinstance(entries, list) or not all(isinstance(entry, Mapping) for entry in entries):
        raise GridError(f"{source}: {key!r} must be an array of tables ([[{key}]])")
    return entries


def _check_keys(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}")


def _name(entry: Mapping[str, Any], where: str) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GridError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    return name


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GridError(f"{where}: expected seconds >= 0, got {value!r}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise GridError(f"{where}: expected true or false, got {value!r}")
    return value


def _int_list(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise GridError(f"{where}: expected a list of integers, got {value!r}")
    if any(v < minimum for v in value):
        raise GridError(f"{where}: values must be at least {minimum}, got {value!r}")
    return tuple(dict.fromkeys(value))

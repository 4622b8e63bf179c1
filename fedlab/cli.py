"""Command-line entry point: ``fedlab run``, ``fedlab pretrain-autoencoder``, ``fedlab resume``,
``fedlab list``, ``fedlab prepare-device-data`` and ``fedlab generate-credentials``."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from fedlab import results
from fedlab.config import AUTOENCODER_SOURCES, ConfigError, RunConfig, read_saved_run_config

logger = logging.getLogger("fedlab")

PROJECT_DIR = Path(__file__).resolve().parent.parent


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """Return ``[tool.flwr.app.config]`` of the app's pyproject.toml."""
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.exists():
        raise FileNotFoundError(f"{pyproject} not found; pass --app-dir the folder of the fedlab app")
    with pyproject.open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def resolve_run_config(
    app_dir: Path, overrides: list[str], clients: int | None, saved_run: str | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """Merge the app's defaults with `overrides` and validate; return the config and the overrides.

    With `saved_run` (a run folder or its ``config.json``), that run's saved config sits
    between the defaults and `overrides`, except its ``run-name``, so the new run gets its
    own folder. Relative ``output-dir``, ``ae-cache-dir``, ``data-root`` and autoencoder
    folders are made absolute against the current folder, because the ServerApp runs in
    another working directory.
    """
    parsed = _parse_pairs(overrides, "--run-config")
    if clients is not None:
        if "num-clients" in parsed and parsed["num-clients"] != clients:
            raise ConfigError(
                f"--clients {clients} and run-config num-clients={parsed['num-clients']} disagree; "
                "give the client count once (with make: make run CLIENTS=N)"
            )
        parsed["num-clients"] = clients
    if saved_run is not None:
        saved = read_saved_run_config(saved_run)
        saved.pop("run-name", None)
        parsed = {**saved, **parsed}
    merged = {**app_defaults(app_dir), **parsed}
    for key in ("output-dir", "ae-cache-dir", "data-root", "autoencoder"):
        value = merged.get(key, "")
        if key == "autoencoder" and value in AUTOENCODER_SOURCES:
            continue
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            parsed[key] = str(Path(value).expanduser().resolve())
    merged.update(parsed)
    return RunConfig.from_run_config(merged), parsed


def check_run_folder_free(config: RunConfig) -> None:
    """Reject a ``run-name`` whose folder already contains files, before any process starts.

    The ServerApp rejects such a folder too, but only after the SuperLink and the
    simulation have started. An interrupted run leaves exactly such a folder behind.
    """
    if not config.run_name:
        return
    try:
        results.check_run_folder_free(results.run_folder(config.output_dir, config.run_name))
    except FileExistsError as err:
        raise ConfigError(str(err)) from err


def check_autoencoder_folder(config: RunConfig) -> None:
    """Reject an ``autoencoder`` folder without a saved autoencoder, before any process starts."""
    if config.autoencoder in AUTOENCODER_SOURCES:
        return
    folder = Path(config.autoencoder).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"invalid run-config value autoencoder={config.autoencoder!r}: no saved autoencoder there "
            f"(config.json is missing); create one with `fedlab pretrain-autoencoder --out {folder}`, "
            "or use autoencoder='pretrain'"
        )


def check_data_root(config: RunConfig) -> None:
    """Reject a ``data-root`` that is not a folder, before any process starts."""
    if not config.data_root:
        return
    folder = Path(config.data_root).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"invalid run-config value data-root={config.data_root!r}: folder not found; point it at "
            f"the local copy of dataset {config.dataset!r} (nothing is downloaded)"
        )


def check_partitions(config: RunConfig) -> None:
    """Make the run's splits and partitions from the labels, so an impossible request fails early.

    Only the labels are read (for image folders, the file names), so the check
    decodes no image. Missing or malformed dataset files fail here too.
    """
    from fedlab.data import read_labels
    from fedlab.federation import check_federated_partitions

    try:
        labels = read_labels(config.dataset, config.data_root)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"cannot read dataset {config.dataset!r}: {err}") from err
    if labels is None:
        return
    try:
        check_federated_partitions(config, labels)
    except ValueError as err:
        cap = ""
        if 0 < config.max_pool_samples:
            cap = f" (max-pool-samples={config.max_pool_samples} caps the client pool; raising it also helps)"
        raise ConfigError(f"invalid partition settings for dataset {config.dataset!r}: {err}{cap}") from err


def check_supernode_count(federation: dict[str, Any], config: RunConfig) -> None:
    """Reject a ``num-supernodes`` federation setting that differs from ``num-clients``."""
    supernodes = federation.get("num-supernodes", config.num_clients)
    if supernodes != config.num_clients:
        raise ConfigError(
            f"invalid --federation-config value num-supernodes={supernodes}: it differs from "
            f"num-clients={config.num_clients}; give the client count once, with --clients "
            "(with make: make run CLIENTS=N)"
        )


def check_client_resources(federation: dict[str, Any]) -> None:
    """Reject client CPU and GPU shares that no simulation could schedule.

    Without ``RAY_ADDRESS`` the simulation runs on this machine, so a client cannot ask for
    more CPUs than it has. On a Ray cluster the cluster's nodes decide.
    """
    cpus = federation.get("client-resources-num-cpus", 1)
    gpus = federation.get("client-resources-num-gpus", 0.0)
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
        raise ConfigError(
            f"invalid --federation-config value client-resources-num-cpus={cpus!r}: must be a "
            "number > 0 (CPUs per client, such as 1 or 0.5)"
        )
    available = os.cpu_count() or 1
    if not os.environ.get("RAY_ADDRESS") and cpus > available:
        raise ConfigError(
            f"invalid --federation-config value client-resources-num-cpus={cpus!r}: this machine "
            f"has {available} CPUs, so no client could start; use at most {available}"
        )
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
        raise ConfigError(
            f"invalid --federation-config value client-resources-num-gpus={gpus!r}: must be a "
            "number >= 0 (a GPU share per client, such as 0.25)"
        )


def check_output_dir(config: RunConfig) -> None:
    """Create ``output-dir`` now, so a folder that cannot be written fails before the run starts."""
    folder = Path(config.output_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"invalid run-config value output-dir={config.output_dir!r}: cannot create it "
            f"({err.strerror}); choose a folder you can write to"
        ) from err
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"invalid run-config value output-dir={config.output_dir!r}: not writable; choose a "
            "folder you can write to"
        )


def resume_hint(config: RunConfig, started: float) -> str:
    """Return a message naming the run folder that `fedlab resume` can continue, if any."""
    output_dir = Path(config.output_dir).expanduser()
    states = []
    if output_dir.is_dir():
        states = [path for path in output_dir.glob("*/uploads/server_state.json") if path.stat().st_mtime >= started]
    if not states:
        return "it stored no uploads to resume from"
    run_dir = max(states, key=lambda path: path.stat().st_mtime).parent.parent
    return f"its stored uploads can be trained from with `fedlab resume {run_dir}`"


PAIR_EXAMPLES = {
    "--run-config": "strategy='fedavg' alpha=0.5",
    "--federation-config": "client-resources-num-cpus=2",
}


# A key=value pair as Flower's parser reads it (a quoted value may contain spaces), or a stray word.
_PAIR_OR_WORD = re.compile(r"""(\S+?)=('[^']*'|"[^"]*"|\S+)|(\S+)""")


def _check_pairs(items: list[str], option: str) -> None:
    """Reject a word that is not ``key=value``, a key given twice and a value that is not TOML.

    Flower's parser skips a word without ``=``, so a run would start without the setting.
    """
    if len(items) == 1 and items[0].strip().endswith(".toml"):
        return  # Flower reads a lone .toml argument as a file of settings
    example = PAIR_EXAMPLES.get(option, "key=value")
    for item in items:
        seen: set[str] = set()  # a later --run-config may override an earlier one's key
        for match in _PAIR_OR_WORD.finditer(item):
            key, value, word = match.groups()
            if word is not None:
                raise ConfigError(
                    f"invalid {option} word {word!r}: it is not key=value; write pairs separated "
                    f"by spaces, e.g. {example}"
                )
            if key in seen:
                raise ConfigError(f"invalid {option}: duplicate key {key!r}; give each key once")
            seen.add(key)
            try:
                tomllib.loads(f"value = {value}")
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"invalid {option} value {key}={value}: not a number, true/false or a quoted "
                    f"string; put strings in quotes, e.g. {key}='{value}'"
                ) from None


def _parse_pairs(items: list[str], option: str) -> dict[str, Any]:
    """Parse ``key=value`` words with Flower's parser, turning its errors into ConfigError."""
    import click
    from flwr.common.config import parse_config_args

    items = [item for item in items if item.strip()]
    _check_pairs(items, option)
    try:
        return parse_config_args(items)
    except click.ClickException as err:
        raise ConfigError(
            f"invalid {option} {' '.join(items)!r}: write key=value pairs separated by spaces, "
            f"with string values in quotes, e.g. {PAIR_EXAMPLES.get(option, 'key=value')}"
        ) from err


def _cmd_run(args: argparse.Namespace) -> int:
    from fedlab.launch import RunFailedError, failure_reason, simulate

    app_dir = Path(args.app_dir).resolve()
    try:
        config, overrides = resolve_run_config(app_dir, args.run_config, args.clients, args.saved_run)
        federation = _parse_pairs(args.federation_config, "--federation-config")
        federation.setdefault("client-resources-num-cpus", 1)
        check_supernode_count(federation, config)
        check_client_resources(federation)
        check_run_folder_free(config)
        check_autoencoder_folder(config)
        check_data_root(config)
        check_output_dir(config)
        check_partitions(config)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        outcome = simulate(
            app_dir,
            num_supernodes=config.num_clients,
            run_config=overrides,
            federation_config=federation,
            echo=not args.quiet,
        )
    except RunFailedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (SystemExit, KeyboardInterrupt):
        print(f"error: fedlab run was interrupted; {resume_hint(config, started)}", file=sys.stderr)
        raise
    if not outcome.completed:
        reason = failure_reason(outcome.log)
        where = "run it again without --quiet to see the log" if args.quiet else "the log above shows why"
        because = f": {reason}" if reason else f"; {where}"
        print(f"error: Flower run {outcome.run_id} ended with status {outcome.status}{because}",
              file=sys.stderr)
        return 1
    if outcome.results_path is None or not outcome.results_path.exists():
        print(f"error: run {outcome.run_id} completed but wrote no results.json", file=sys.stderr)
        return 1
    print(outcome.results_path)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fedlab.autoencoder import (
        build_autoencoder,
        pretrain_autoencoder,
        reconstruction_psnr,
        save_autoencoder,
    )
    from fedlab.federation import federated_data

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, _ = resolve_run_config(Path(args.app_dir).resolve(), args.run_config, None)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser()
    if out.is_dir() and any(out.iterdir()) and not args.force:
        print(f"error: {out} already contains files; choose another --out, or pass --force to replace "
              "the autoencoder in it", file=sys.stderr)
        return 2
    data = federated_data(config)
    if data.public is None:
        print(f"error: public-fraction={config.public_fraction} leaves no public split to train on",
              file=sys.stderr)
        return 2
    channels, height, _ = data.train.image_shape
    autoencoder = build_autoencoder(
        channels, height, downsample_factor=config.ae_downsample,
        latent_channels=config.ae_latent_channels, base_channels=config.ae_base_channels,
        seed=config.seed,
    )
    pretrain_autoencoder(autoencoder, data.public.float_images(), epochs=config.ae_pretrain_epochs,
                         seed=config.seed)
    path = save_autoencoder(autoencoder, args.out)
    psnr = reconstruction_psnr(autoencoder, data.test.float_images())
    logger.info("Trained on %s public images; test PSNR %.2f dB", len(data.public), psnr)
    print(path)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from fedlab.payload import PayloadError
    from fedlab.resume import resume_run
    from fedlab.server_app import _configure_logging

    _configure_logging()
    try:
        path = resume_run(Path(args.run_dir), force=args.force)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, PayloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    from fedlab.registries import all_registries

    for kind, registry in all_registries().items():
        print(f"{kind}: {', '.join(registry.names())}")
    return 0


def _cmd_prepare_device_data(args: argparse.Namespace) -> int:
    from fedlab.device_data import prepare_device_data

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, _ = resolve_run_config(Path(args.app_dir).resolve(), args.run_config, args.clients)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        folders = prepare_device_data(config, Path(args.out))
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0


def _cmd_generate_credentials(args: argparse.Namespace) -> int:
    from fedlab.deploy import generate_credentials

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        credentials = generate_credentials(
            Path(args.out), args.supernodes, hosts=args.host, valid_days=args.days
        )
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(credentials.superlink_certificate.parent)
    for keys in credentials.supernodes:
        print(keys.folder)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlab",
        description="One-shot federated learning on Flower: FedSD2C and its baselines, in "
        "simulation and on real devices.",
        epilog="Every run-config key and its default: docs/run-config.md. "
        "Run `fedlab COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one simulation through `flwr run` on a private SuperLink")
    run.add_argument("--app-dir", default=str(PROJECT_DIR), help="folder of the Flower App (default: %(default)s)")
    run.add_argument("--clients", type=int, default=None, help="number of simulated clients (sets num-clients and num-supernodes)")
    run.add_argument("--run-config", action="append", default=[], help="run-config overrides, e.g. \"strategy='fedavg' alpha=0.5\"")
    run.add_argument("--federation-config", action="append", default=[], help="federation overrides, e.g. \"client-resources-num-cpus=2\"")
    run.add_argument("--from", dest="saved_run", metavar="RUN", default=None,
                     help="start from the config saved by an earlier run (its folder or config.json); "
                          "--clients and --run-config change it, and the run gets a new folder")
    run.add_argument("--quiet", action="store_true", help="do not echo the run's log")
    run.set_defaults(func=_cmd_run)

    pretrain = commands.add_parser("pretrain-autoencoder", help="pretrain the public autoencoder on the public split and save it")
    pretrain.add_argument("--out", required=True, help="folder to save the AutoencoderKL in (from_pretrained format)")
    pretrain.add_argument("--app-dir", default=str(PROJECT_DIR), help="folder of the Flower App (default: %(default)s)")
    pretrain.add_argument("--run-config", action="append", default=[], help="run-config overrides (dataset, seed, ae-* keys)")
    pretrain.add_argument("--force", action="store_true", help="replace an autoencoder already saved in --out")
    pretrain.set_defaults(func=_cmd_pretrain)

    resume = commands.add_parser("resume", help="finish a crashed run from the uploads stored in its run folder")
    resume.add_argument("run_dir", help="the run folder, outputs/<run-id>")
    resume.add_argument("--force", action="store_true", help="train again even if results.json exists")
    resume.set_defaults(func=_cmd_resume)

    prepare = commands.add_parser(
        "prepare-device-data",
        help="write one data folder per client (client-<i>/) from the split a simulation with the same run config uses",
    )
    prepare.add_argument("--out", required=True, help="folder to write client-0/, client-1/, ... into")
    prepare.add_argument("--clients", type=int, default=None, help="number of clients (sets num-clients)")
    prepare.add_argument("--app-dir", default=str(PROJECT_DIR), help="folder of the Flower App (default: %(default)s)")
    prepare.add_argument("--run-config", action="append", default=[], help="run-config overrides (dataset, partitioner, alpha, seed, ...)")
    prepare.set_defaults(func=_cmd_prepare_device_data)

    credentials = commands.add_parser(
        "generate-credentials",
        help="write a CA, the SuperLink's TLS certificate and key, and SuperNode authentication key pairs",
    )
    credentials.add_argument("--out", required=True, help="folder to write ca/, superlink/ and supernode-<i>/ into")
    credentials.add_argument("--supernodes", type=int, required=True, help="number of SuperNode key pairs")
    credentials.add_argument("--host", action="append", default=[], help="host name or IP address the SuperNodes reach the SuperLink at (repeatable; 127.0.0.1 and localhost are always included)")
    credentials.add_argument("--days", type=int, default=365, help="validity of the CA and SuperLink certificates in days (default: %(default)s)")
    credentials.set_defaults(func=_cmd_generate_credentials)

    listing = commands.add_parser("list", help="list the registered strategies, datasets, models, partitioners and distillers")
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

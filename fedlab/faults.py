"""Injected client faults: failures, late replies and malformed uploads, drawn from the run seed.

Real federations lose clients, wait for stragglers and receive broken uploads. These
faults let a run reproduce such cases on purpose, so that robustness is measured rather
than assumed:

* ``fail-fraction`` and ``late-fraction`` pick that share of the partitions (rounded to
  whole clients) from the run seed. A failing client raises an error instead of replying,
  and a late one sleeps ``late-seconds`` before its reply.
* ``fault-plan`` names faults for chosen partitions, e.g. ``"0:fail 3:non-finite"``; it
  overrides the drawn faults for those partitions. Besides ``fail`` and ``late`` it accepts
  the malformed-reply kinds in :data:`MALFORMED_KINDS`, which corrupt the reply in one
  specific way so that the server's upload checks can be exercised one by one.

Client and server compute the same assignment from the config alone, so the server can
report which clients were meant to fail.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

if TYPE_CHECKING:
    from fedlab.config import RunConfig

logger = logging.getLogger(__name__)

FAIL = "fail"
LATE = "late"

# Malformed-reply kinds and what each one does to the uploaded ArrayRecord.
MALFORMED_KINDS: dict[str, str] = {
    "missing-record": "drops the uploaded ArrayRecord",
    "missing-array": "drops the last array of the record",
    "extra-array": "adds an array the server does not expect",
    "bad-shape": "gives the first array an extra dimension",
    "bad-dtype": "casts the first array to int64",
    "non-finite": "writes NaN into the first array",
    "bad-class-id": "sets a class id to the number of classes (distillates only)",
    "bad-soft-labels": "makes the soft labels negative (distillates only)",
    "oversize": "pads the reply beyond max-payload-bytes",
}
FAULT_KINDS: tuple[str, ...] = (FAIL, LATE, *MALFORMED_KINDS)

# Purpose mixed into the run seed so that the fault draw is independent of other streams.
_SEED_FAULTS = 0xFA17


class InjectedFault(RuntimeError):
    """Raised by a client that the config makes fail."""


def parse_fault_plan(plan: str, num_clients: int) -> dict[int, str]:
    """Parse ``"partition:kind"`` pairs separated by spaces or commas.

    Raises
    ------
    fedlab.config.ConfigError
        On a malformed pair, a partition outside ``[0, num_clients)``, a repeated
        partition, or an unknown kind (the message lists the valid kinds).
    """
    from fedlab.config import ConfigError

    faults: dict[int, str] = {}
    for item in (part for part in re.split(r"[\s,]+", plan.strip()) if part):
        match = re.fullmatch(r"(\d+):([a-z-]+)", item)
        if match is None:
            raise ConfigError(
                f"invalid run-config value fault-plan={plan!r}: {item!r} is not 'partition:kind'; "
                "write e.g. fault-plan='0:fail 3:non-finite'"
            )
        partition, kind = int(match.group(1)), match.group(2)
        if kind not in FAULT_KINDS:
            raise ConfigError(
                f"invalid run-config value fault-plan={plan!r}: unknown fault kind {kind!r}; "
                f"valid kinds: {', '.join(FAULT_KINDS)}"
            )
        if partition >= num_clients:
            raise ConfigError(
                f"invalid run-config value fault-plan={plan!r}: partition {partition} does not "
                f"exist with num-clients={num_clients} (partitions are 0..{num_clients - 1})"
            )
        if partition in faults:
            raise ConfigError(
                f"invalid run-config value fault-plan={plan!r}: partition {partition} is listed twice"
            )
        faults[partition] = kind
    return faults


def assigned_faults(config: RunConfig) -> dict[int, str]:
    """Return the fault of every partition that has one, as the config and seed determine."""
    n = config.num_clients
    order = np.random.default_rng([config.seed, _SEED_FAULTS]).permutation(n)
    num_fail = round(config.fail_fraction * n)
    num_late = min(round(config.late_fraction * n), n - num_fail)
    faults = {int(p): FAIL for p in order[:num_fail]}
    faults.update({int(p): LATE for p in order[num_fail : num_fail + num_late]})
    faults.update(parse_fault_plan(config.fault_plan, n))
    return faults


def fault_for(config: RunConfig, partition_id: int) -> str | None:
    """Return the fault assigned to `partition_id`, or None."""
    if not (config.fail_fraction or config.late_fraction or config.fault_plan.strip()):
        return None
    return assigned_faults(config).get(partition_id)


def before_reply(config: RunConfig, partition_id: int) -> str | None:
    """Apply a ``fail`` or ``late`` fault of this partition; return its fault kind (or None).

    Raises
    ------
    InjectedFault
        When the partition is assigned to fail.
    """
    fault = fault_for(config, partition_id)
    if fault == FAIL:
        raise InjectedFault(
            f"injected failure of partition {partition_id} (fail-fraction={config.fail_fraction}, "
            f"fault-plan={config.fault_plan!r})"
        )
    if fault == LATE:
        logger.info("Partition %s replies late: sleeping %.1f s", partition_id, config.late_seconds)
        time.sleep(config.late_seconds)
    return fault


def corrupt_reply(content: RecordDict, kind: str, record_key: str, max_payload_bytes: int) -> RecordDict:
    """Return a copy of `content` whose ArrayRecord `record_key` is malformed as `kind` says.

    Raises
    ------
    ValueError
        When `kind` is not a malformed-reply kind, or it needs arrays the record lacks.
    """
    if kind not in MALFORMED_KINDS:
        raise ValueError(f"{kind!r} is not a malformed-reply kind; valid: {', '.join(MALFORMED_KINDS)}")
    records = {key: value for key, value in content.items()}
    if kind == "missing-record":
        records.pop(record_key)
        return RecordDict(records)
    arrays = {name: array.numpy() for name, array in content.array_records[record_key].items()}
    names = list(arrays)
    first = names[0]
    if kind == "missing-array":
        arrays.pop(names[-1])
    elif kind == "extra-array":
        arrays["unexpected"] = np.zeros(3, dtype=np.float32)
    elif kind == "bad-shape":
        arrays[first] = arrays[first][None]
    elif kind == "bad-dtype":
        arrays[first] = arrays[first].astype(np.int64)
    elif kind == "non-finite":
        values = arrays[first].astype(np.float32 if arrays[first].dtype.kind != "f" else arrays[first].dtype)
        values.reshape(-1)[0] = np.nan
        arrays[first] = values
    elif kind == "bad-class-id":
        _require(arrays, "class-ids", "soft-labels", kind=kind)
        class_ids = arrays["class-ids"].copy()
        class_ids[0] = arrays["soft-labels"].shape[1]
        arrays["class-ids"] = class_ids
    elif kind == "bad-soft-labels":
        _require(arrays, "soft-labels", kind=kind)
        arrays["soft-labels"] = -arrays["soft-labels"]
    elif kind == "oversize":
        arrays["padding"] = np.zeros(max_payload_bytes + 1, dtype=np.uint8)
    records[record_key] = ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})
    return RecordDict(records)


def _require(arrays: dict[str, np.ndarray], *names: str, kind: str) -> None:
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"fault {kind!r} needs arrays {missing}, which this reply does not carry")

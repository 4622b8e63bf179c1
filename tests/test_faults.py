"""Injected faults, reply checks on the server, and the on-disk store of accepted uploads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Error, Message, MetricRecord, RecordDict

from fedlab import faults
from fedlab.config import ConfigError, RunConfig
from fedlab.federation import federated_data
from fedlab.payload import (
    ARRAYS_KEY,
    DISTILLATES_KEY,
    METRICS_KEY,
    PARTITION_ID,
    TRAIN,
    DistillatePayload,
    PayloadError,
    model_to_record,
)
from fedlab.server_run import FAILED, REJECTED, TIMED_OUT, NotEnoughRepliesError, ServerRun
from fedlab.results import write_json
from fedlab.upload_store import UploadStore
from strategies.fedsd2c import FedSD2CStrategy, autoencoder_cache_root

LATENT_SHAPE = (4, 2, 2)
NUM_CLASSES = 10


def tiny_config(**changes: object) -> RunConfig:
    config = RunConfig(dataset="digits", max_pool_samples=200, model_width=8, model_depth=1,
                       min_partition_size=0, **changes)
    config.validate()
    return config


def distillates(count: int = 4, seed: int = 0) -> DistillatePayload:
    generator = torch.Generator().manual_seed(seed)
    return DistillatePayload.from_tensors(
        torch.randn(count, *LATENT_SHAPE, generator=generator),
        torch.softmax(torch.randn(count, NUM_CLASSES, generator=generator), dim=1),
        torch.arange(count) % NUM_CLASSES,
        "float16",
    )


def distillate_reply(node_id: int, partition_id: int, fault: str | None = None) -> Message:
    content = RecordDict({
        DISTILLATES_KEY: distillates().to_record(),
        METRICS_KEY: MetricRecord({PARTITION_ID: partition_id}),
    })
    if fault is not None:
        content = faults.corrupt_reply(content, fault, DISTILLATES_KEY, max_payload_bytes=4096)
    return reply_from(node_id, content)


def request_to(node_id: int) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type=TRAIN)
    request.metadata.__dict__["_message_id"] = f"request-{node_id}"
    return request


def reply_from(node_id: int, content: RecordDict) -> Message:
    return Message(content=content, reply_to=request_to(node_id))


def check_distillates(reply: Message) -> None:
    if DISTILLATES_KEY not in reply.content.array_records:
        raise PayloadError(f"reply lacks the '{DISTILLATES_KEY}' ArrayRecord")
    DistillatePayload.from_record(reply.content.array_records[DISTILLATES_KEY], NUM_CLASSES, LATENT_SHAPE)


@pytest.fixture(autouse=True)
def task_identity():
    """Messages are built outside a Flower process here; give them the identity Flower would."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture()
def server(tmp_path: Path) -> ServerRun:
    config = tiny_config(max_payload_bytes=4096)
    return ServerRun(grid=None, config=config, data=federated_data(config), output_dir=tmp_path)


# Fault assignment --------------------------------------------------------------------------


def test_fault_plan_parses_pairs() -> None:
    assert faults.parse_fault_plan("0:fail, 3:non-finite  7:late", 10) == {0: "fail", 3: "non-finite", 7: "late"}
    assert faults.parse_fault_plan("  ", 10) == {}


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("0-fail", "is not 'partition:kind'"),
        ("0:explode", "unknown fault kind 'explode'"),
        ("10:fail", "partition 10 does not exist"),
        ("1:fail 1:late", "listed twice"),
    ],
)
def test_fault_plan_errors_name_the_problem(plan: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(fault_plan=plan)


def test_distillate_faults_need_fedsd2c() -> None:
    with pytest.raises(ConfigError, match="strategy='fedsd2c'"):
        tiny_config(strategy="fedavg", fault_plan="0:bad-class-id")


def test_fraction_faults_are_seeded_and_disjoint() -> None:
    config = tiny_config(num_clients=10, fail_fraction=0.3, late_fraction=0.2)
    drawn = faults.assigned_faults(config)
    assert drawn == faults.assigned_faults(config)
    assert sorted(drawn.values()).count("fail") == 3
    assert sorted(drawn.values()).count("late") == 2
    other_seed = faults.assigned_faults(config.replace(seed=1))
    assert sorted(other_seed.values()) == sorted(drawn.values())
    assert other_seed != drawn


def test_fault_plan_overrides_the_draw() -> None:
    config = tiny_config(num_clients=10, fail_fraction=1.0, fault_plan="4:late")
    drawn = faults.assigned_faults(config)
    assert drawn[4] == "late"
    assert sum(kind == "fail" for kind in drawn.values()) == 9


def test_failing_client_raises_and_others_pass() -> None:
    config = tiny_config(num_clients=4, fault_plan="2:fail")
    with pytest.raises(faults.InjectedFault, match="partition 2"):
        faults.before_reply(config, 2)
    assert faults.before_reply(config, 1) is None


def test_fractions_must_fit() -> None:
    with pytest.raises(ConfigError, match="fail-fraction \\+ late-fraction"):
        tiny_config(fail_fraction=0.7, late_fraction=0.5)


# Reply checks ------------------------------------------------------------------------------

EXPECTED_REASONS = {
    "missing-record": "lacks the 'distillates' ArrayRecord",
    "missing-array": "lacks arrays ['class-ids']",
    "extra-array": "unexpected arrays ['unexpected']",
    "bad-shape": "latents have shape (1, 4, 4, 2, 2)",
    "bad-dtype": "latents have dtype int64",
    "non-finite": "NaN or infinite",
    "bad-class-id": "class ids span [1, 10], expected [0, 9]",
    "bad-soft-labels": "not probability distributions",
    "oversize": "exceeds max-payload-bytes=4096",
}


def test_every_malformed_kind_has_an_expected_reason() -> None:
    assert set(EXPECTED_REASONS) == set(faults.MALFORMED_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
def test_malformed_distillates_are_rejected_with_reason(server: ServerRun, kind: str) -> None:
    replies = [distillate_reply(1, 0), distillate_reply(2, 1, fault=kind)]
    accepted = server.account_replies([1, 2], replies, "train.distill", check=check_distillates)
    assert [reply.metadata.src_node_id for reply in accepted] == [1]
    [failure] = server.failed_clients()
    assert failure["node_id"] == 2 and failure["kind"] == REJECTED and failure["partition_id"] == 1
    assert EXPECTED_REASONS[kind] in failure["reason"]
    assert 2 not in server.client_metrics  # a rejected reply adds no metrics


def test_missing_and_error_replies_are_recorded(server: ServerRun) -> None:
    error = Message(Error(code=0, reason="Message: injected failure of partition 2"), reply_to=request_to(3))
    accepted = server.account_replies([1, 3, 4], [distillate_reply(1, 0), error], "train.distill")
    assert len(accepted) == 1
    kinds = {f["node_id"]: (f["kind"], f["reason"]) for f in server.failed_clients()}
    assert kinds[3] == (FAILED, "injected failure of partition 2")
    assert kinds[4][0] == TIMED_OUT and "reply-timeout" in kinds[4][1]


def test_too_few_accepted_replies_stop_the_run(server: ServerRun) -> None:
    config = server.config.replace(min_replies=2)
    strict = ServerRun(grid=None, config=config, data=server.data, output_dir=server.output_dir)
    with pytest.raises(NotEnoughRepliesError, match="min-replies=2"):
        strict.account_replies([1, 2], [distillate_reply(1, 0), distillate_reply(2, 1, "non-finite")],
                               "train.distill", check=check_distillates)


def test_accepted_replies_in_partition_order(server: ServerRun) -> None:
    # Node ids do not follow partition ids, and node 9 reports no partition id.
    no_partition = reply_from(9, RecordDict({DISTILLATES_KEY: distillates().to_record()}))
    replies = [distillate_reply(5, 2), no_partition, distillate_reply(7, 0), distillate_reply(3, 1)]

    accepted = server.account_replies([3, 5, 7, 9], replies, "train.distill", check=check_distillates)

    assert [reply.metadata.src_node_id for reply in accepted] == [7, 3, 5, 9]


@pytest.mark.parametrize("kind", ["missing-record", "missing-array", "extra-array", "bad-shape", "bad-dtype",
                                  "non-finite"])
def test_malformed_model_uploads_are_rejected(server: ServerRun, kind: str) -> None:
    # The honest model is larger than the 4096-byte cap of the fixture, so lift the cap.
    relaxed = ServerRun(grid=None, config=server.config.replace(max_payload_bytes=10**8),
                        data=server.data, output_dir=server.output_dir)
    good = RecordDict({ARRAYS_KEY: model_to_record(relaxed.build_model())})
    bad = faults.corrupt_reply(good, kind, ARRAYS_KEY, max_payload_bytes=4096)
    accepted = relaxed.account_replies(
        [1, 2], [reply_from(1, good), reply_from(2, bad)], TRAIN, check=relaxed.check_model_reply
    )
    assert [reply.metadata.src_node_id for reply in accepted] == [1]
    [failure] = relaxed.failed_clients()
    assert failure["node_id"] == 2 and failure["kind"] == REJECTED


# Stored uploads ----------------------------------------------------------------------------


def test_store_round_trip_orders_by_partition(server: ServerRun) -> None:
    store = UploadStore(server.output_dir)
    for partition in (3, 0, 1):
        store.save_distillates(partition, distillates(seed=partition))
    server.node_partitions.update({10: 3, 11: 0, 12: 1})
    server.upload_bytes[10] = 123
    server.client_metrics[10] = {"num-examples": 5}
    server.record_failure(13, "injected failure", "train.distill")
    store.save_state(server, [10, 11, 12, 13], complete=True, autoencoder={"fingerprint": "abc"})

    loaded = store.load_distillates(NUM_CLASSES, LATENT_SHAPE)
    assert [partition for partition, _ in loaded] == [0, 1, 3]
    np.testing.assert_array_equal(loaded[2][1].latents, distillates(seed=3).latents)
    assert not list(store.root.glob(".*"))  # no temporary files left behind

    restored = ServerRun(grid=None, config=server.config, data=server.data, output_dir=server.output_dir)
    node_ids, state = UploadStore(server.output_dir).restore(restored)
    assert node_ids == [10, 11, 12, 13] and state["collection_complete"]
    assert restored.upload_bytes[10] == 123 and restored.node_partitions[12] == 1
    assert restored.client_metrics[10] == {"num-examples": 5}
    assert restored.failed_clients()[0]["node_id"] == 13


def test_resume_lists_missing_uploads(server: ServerRun) -> None:
    store = UploadStore(server.output_dir)
    for partition in (0, 1, 2):
        store.save_distillates(partition, distillates(seed=partition))
    server.node_partitions.update({20: 0, 21: 1, 22: 2, 23: 3})
    server.record_failure(23, "injected failure", "train.distill")
    store.distillates_path(1).unlink()

    FedSD2CStrategy._record_missing_uploads(server, store, stored={0, 2})

    failures = server.failed_clients()
    assert [failure["node_id"] for failure in failures] == [23, 21]
    assert failures[1]["partition_id"] == 1
    assert "partition-0001.npz is missing" in str(failures[1]["reason"])


def test_moved_run_uses_original_cache(tmp_path: Path) -> None:
    original, moved = tmp_path / "outputs", tmp_path / "elsewhere"
    (original / "cache").mkdir(parents=True)
    (moved / "run-1").mkdir(parents=True)
    config = tiny_config(output_dir=str(original))

    assert autoencoder_cache_root(config, original / "run-1") == original / "cache"
    assert autoencoder_cache_root(config, moved / "run-1") == original / "cache"
    (moved / "cache").mkdir()
    assert autoencoder_cache_root(config, moved / "run-1") == moved / "cache"
    assert autoencoder_cache_root(config.replace(ae_cache_dir=str(tmp_path / "ae")), moved / "run-1") == tmp_path / "ae"


def test_strategy_prepares_autoencoder(tmp_path: Path) -> None:
    config = tiny_config(autoencoder="random", output_dir=str(tmp_path))
    server = ServerRun(grid=None, config=config, data=federated_data(config), output_dir=tmp_path / "run-1")

    autoencoder, info = FedSD2CStrategy(config)._autoencoder(server)

    assert info.source == "random"
    assert len(info.latent_shape) == 3
    assert sum(p.numel() for p in autoencoder.parameters()) > 0
    assert server.phase_seconds["autoencoder"] >= 0


def test_run_files_follow_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
        path = UploadStore(tmp_path).save_distillates(0, distillates())
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_store_rejects_a_damaged_file(server: ServerRun) -> None:
    store = UploadStore(server.output_dir)
    path = store.save_distillates(0, distillates())
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PayloadError, match="unreadable.*move the file away"):
        store.load_distillates(NUM_CLASSES, LATENT_SHAPE)


def test_store_rejects_damaged_state(server: ServerRun) -> None:
    store = UploadStore(server.output_dir)
    store.save_state(server, [1], complete=True)
    (store.root / "server_state.json").write_text("{not json")
    with pytest.raises(PayloadError, match="server_state.json is unreadable"):
        store.load_state()
    (store.root / "server_state.json").write_text("[]")
    with pytest.raises(PayloadError, match="not a fedlab server state"):
        store.load_state()


def test_missing_store_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no uploads to resume from"):
        UploadStore(tmp_path).load_state()


def test_resume_refuses_finished_and_unsupported_runs(tmp_path: Path) -> None:
    from fedlab.resume import resume_run
    from fedlab.results import write_json

    with pytest.raises(FileNotFoundError, match="config.json"):
        resume_run(tmp_path)
    write_json(tmp_path / "config.json", {"run_config": tiny_config(strategy="fedavg").to_run_config()})
    with pytest.raises(ValueError, match="resumable strategies: fedsd2c"):
        resume_run(tmp_path)
    write_json(tmp_path / "results.json", {})
    # A strategy without uploads is rejected before the --force check, even for a finished run.
    with pytest.raises(ValueError, match="resumable strategies: fedsd2c"):
        resume_run(tmp_path, force=False)
    write_json(tmp_path / "config.json", {"run_config": tiny_config(strategy="fedsd2c").to_run_config()})
    with pytest.raises(FileExistsError, match="--force"):
        resume_run(tmp_path)


def test_make_run_dir_rejects_used_folder(tmp_path: Path) -> None:
    from fedlab.results import make_run_dir

    first = make_run_dir(str(tmp_path), "fedsd2c", 1, run_name="trial")
    assert first == tmp_path.resolve() / "trial"
    assert first.is_dir()
    # An empty folder, such as one created by hand beforehand, is used as it is.
    assert make_run_dir(str(tmp_path), "fedsd2c", 2, run_name="trial") == first
    (first / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="trial already contains files"):
        make_run_dir(str(tmp_path), "fedsd2c", 3, run_name="trial")
    assert (first / "results.json").read_text() == "{}"
    unnamed = make_run_dir(str(tmp_path), "fedavg", 4)
    assert unnamed.parent == tmp_path.resolve()
    assert unnamed.name.endswith("-fedavg-4")

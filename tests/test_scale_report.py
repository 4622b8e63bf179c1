"""Tests of the scale benchmark's process classification, overhead ratios and report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import scale


@pytest.mark.parametrize(
    ("cmdline", "kind"),
    [
        ("/venv/bin/python3 /venv/bin/flwr-simulation --runtime-api-address 127.0.0.1:1", "driver"),
        ("ray::ClientAppActor.run", "actors"),
        ("ray::ClientAppActor", "actors"),
        ("ray::IDLE", "ray"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x", "ray"),
        ("/venv/bin/python3 -u /venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py", "ray"),
        ("/venv/bin/python3 /venv/bin/flower-superlink --insecure", "flower"),
        ("/venv/bin/python3 /venv/bin/flwr run /app fedlab-local --stream", "flower"),
        ("/venv/bin/python -m fedlab.cli run --app-dir /app", "launcher"),
    ],
)
def test_process_kind(cmdline: str, kind: str) -> None:
    assert scale.process_kind(cmdline) == kind


def test_tree_sampler_reads_this_process() -> None:
    sampler = scale.TreeSampler(os.getpid())
    sampler.sample()
    assert sampler.peak_pss_total > 0
    assert sampler.peak_rss["launcher"] > 0
    assert sampler.cpu_seconds > 0


def row(strategy: str, clients: int, mode: str, wall: float, cpu: float, returncode: int = 0) -> dict:
    return {
        "strategy": strategy, "clients": clients, "mode": mode, "returncode": returncode,
        "wall_seconds": wall, "clients_per_second": clients / wall, "cpu_seconds": cpu,
        "peak_pss_total_bytes": 3 * 2**30, "peak_pss_by_kind_bytes": {"actors": 2**30},
        "driver_peak_rss_bytes": 2**30, "loadavg_before": [1.0, 1.0, 1.0], "date": "2026-12-05T01:00:00",
        "command": f"{mode} {clients}",
        "machine": {"processor": "cpu", "cpu_affinity": 2, "memory_gib": 24, "gpu": None,
                    "python": "3.11", "torch": "2"},
    }


def test_table_rows_overhead_ratio() -> None:
    rows = {
        ("fedavg", 10, "plain"): row("fedavg", 10, "plain", wall=100.0, cpu=60.0),
        ("fedavg", 10, "platform"): row("fedavg", 10, "platform", wall=150.0, cpu=90.0),
        ("fedavg", 100, "platform"): row("fedavg", 100, "platform", wall=300.0, cpu=200.0),
    }
    flat = {(r["strategy"], r["clients"], r["mode"]): r for r in scale.table_rows(rows)}
    assert flat[("fedavg", 10, "platform")]["overhead_ratio_wall"] == 1.5
    assert flat[("fedavg", 10, "platform")]["overhead_ratio_cpu"] == 1.5
    assert flat[("fedavg", 10, "plain")]["overhead_ratio_wall"] is None
    # Without a plain row there is nothing to compare with.
    assert flat[("fedavg", 100, "platform")]["overhead_ratio_wall"] is None
    assert flat[("fedavg", 10, "platform")]["actors_peak_pss_mib"] == "1024"


def test_markdown_keeps_text_around_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "RESULTS_DIR", tmp_path)
    (tmp_path / "scale.md").write_text(f"# Title\n\nIntro.\n\n{scale.TABLE_START}\nold\n{scale.TABLE_END}\n\nFindings.\n")
    rows = {("fedavg", 10, "plain"): row("fedavg", 10, "plain", wall=100.0, cpu=60.0)}
    scale.write_markdown(scale.table_rows(rows), list(rows.values()))
    text = (tmp_path / "scale.md").read_text()
    assert text.startswith("# Title\n\nIntro.\n")
    assert text.endswith("\n\nFindings.\n")
    assert "old" not in text
    assert "| FedAvg one-shot | 10 | plain | 100.0 |" in text

"""Smoke test of the benchmark harness (``make bench``): tiny, no latency, every contender.

It checks that the harness runs end to end and that its own correctness check passed for every
contender (each message stored exactly once, intact, queue empty), and that the JSON report has
the fields the README's table is built from. It asserts nothing about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.support import ROOT

CONTENDERS = {"baseline", "ceiling", "ceiling-obstore", "sqs-processor-default",
              "sqs-processor-tuned", "sqs-processor-batched"}


def test_bench_harness_runs_every_contender_and_verifies_the_archive(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--n", "50", "--baseline-n", "20", "--latency-ms", "0",
         "--steady-rate", "10", "--steady-seconds", "2",
         "--steady-contenders", "sqs-processor-tuned", "--big-n", "3",
         "--big-contenders", "ceiling-obstore,sqs-processor-default", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())

    drains = {run["contender"]: run for run in report["drains"]}
    assert set(drains) == CONTENDERS
    assert drains["baseline"]["messages"] == 20
    for name, run in drains.items():
        check = run["check"]
        assert check["ok"], (name, check)
        assert check["sent"] == check["stored"] == run["messages"]
        assert check["queue_remaining"] == 0
        assert run["msgs_per_s"] > 0 and run["cpu_ms_per_msg"] > 0, name
        assert 10 < run["peak_rss_mib"] < 1024, name
        assert set(run["latency_s"]) >= {"p50", "p99", "max"}, name
        if name == "sqs-processor-batched":  # many messages per PUT
            assert run["server"]["requests_per_msg"] < 1, name
        else:
            assert run["server"]["requests_per_msg"] > 1, name  # at least a PUT per message
    # The ratios in the table are each contender's own figure over the reference's.
    for name, run in drains.items():
        for ref in ("baseline", "ceiling", "ceiling-obstore"):
            reference, key = drains[ref], ref.replace("-", "_")
            assert run[f"speed_x_{key}"] == pytest.approx(
                run["msgs_per_s"] / reference["msgs_per_s"], rel=0.01), (name, ref)
            assert run[f"cpu_x_{key}"] == pytest.approx(
                run["cpu_ms_per_msg"] / reference["cpu_ms_per_msg"], rel=0.01), (name, ref)
    # The emulator stores a plain put the same cheap way whichever client sent it, so its CPU
    # is not what tells the S3 clients apart.
    for name in ("ceiling", "ceiling-obstore", "sqs-processor-default"):
        assert drains[name]["server"]["fast_puts"] == 50, (name, drains[name]["server"])
    # The spec's design deletes one message per call; the others delete in batches.
    assert drains["baseline"]["server"]["actions"]["sqs:DeleteMessage"]["count"] == 20
    assert "sqs:DeleteMessage" not in drains["sqs-processor-tuned"]["server"]["actions"]

    [steady] = report["steady"]
    assert steady["contender"] == "sqs-processor-tuned" and steady["check"]["ok"]
    assert steady["feeder"]["sent"] == steady["messages"] == 20
    assert steady["latency_s"]["p99"] >= steady["latency_s"]["p50"] > 0

    assert report["emulator"]["patches"], "the output must say what was done to the emulator"
    assert report["machine"]["nproc"] >= 1 and report["machine"]["python"]
    # The 1 MiB drain: every message stored intact, and a peak RSS for each contender.
    big = {run["contender"]: run for run in report["big"]}
    assert set(big) == {"ceiling-obstore", "sqs-processor-default"}
    for name, run in big.items():
        assert run["check"]["ok"] and run["check"]["stored"] == 3, (name, run["check"])
        assert run["peak_rss_mib"] > 10, name

    targets = {t["what"].split(" (")[0]: t for t in report["targets"]}
    assert "defaults CPU/msg vs obstore ceiling" in targets
    assert "peak RSS MiB, any sqs-processor drain of 1 MiB messages" in targets
    assert all(t["value"] is not None for t in targets.values()), targets
    assert "sqs-processor-tuned" in result.stdout and "Targets" in result.stdout

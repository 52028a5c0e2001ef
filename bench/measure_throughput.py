"""Measure the processor's throughput under a CPU quota, as the Deployment's limits impose.

    sudo .venv/bin/python bench/measure_throughput.py --cpu-millis 200 --seconds 60

Runs ``sqs-processor run`` (the shipped pipeline's components, JSON logs to a file) against
the local emulator, inside a cgroup v1 ``cpu`` group whose CFS quota is ``--cpu-millis`` per
second (root and /sys/fs/cgroup/cpu needed; 0 means no quota). A producer outside the group keeps
the queue a few hundred messages deep. Reports messages stored and deleted per second (from
/health's messages_processed), CPU seconds per message, and the peak resident memory.

The emulator (moto) runs on the same machine outside the quota and speaks plain HTTP, so this
measures the processor's own CPU cost without TLS and without real AWS latency.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3

CGROUP = Path("/sys/fs/cgroup/cpu")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-millis", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--depth", type=int, default=300, help="messages kept in the queue")
    args = parser.parse_args()

    emulator = subprocess.Popen([sys.executable, "-m", "sqs_processor.emulator", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = emulator.stdout.readline().split()[-1]
    threading.Thread(target=emulator.stdout.read, daemon=True).start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    os.environ.update(env)
    try:
        return _measure(args, env, emulator)
    finally:
        emulator.terminate()
        emulator.wait(10)


def _measure(args: argparse.Namespace, env: dict[str, str], emulator: subprocess.Popen) -> int:
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    queue_url = sqs.create_queue(QueueName="bench")["QueueUrl"]
    s3.create_bucket(Bucket="bench-archive")
    body = json.dumps({"order_id": 1001, "status": "created", "items": [{"sku": "A-1", "qty": 2}],
                       "note": "x" * 400})

    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            depth = int(sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
                ["Attributes"]["ApproximateNumberOfMessages"])
            for _ in range(max(0, args.depth - depth) // 10):
                sqs.send_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(i), "MessageBody": body} for i in range(10)])
            stop.wait(0.5)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    work = Path(tempfile.mkdtemp())
    config = work / "pipeline.yaml"
    config.write_text(f"""
service: {{health_port: 18080, health_host: 127.0.0.1}}
source: {{type: sqs, queue_url: "{queue_url}", wait_time_seconds: 1, poll_interval_seconds: 1}}
transforms: [json_parse, enrich]
sink: {{type: s3, bucket: bench-archive, prefix: sqs-messages/}}
ack: {{type: sqs_delete}}
""")
    group = None
    if args.cpu_millis:
        group = CGROUP / f"sqs-processor-bench-{os.getpid()}"
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(args.cpu_millis * 100))
    log = (work / "processor.log").open("w")
    # Start stopped, move into the group, then continue: the imports are measured too.
    processor = subprocess.Popen(
        [sys.executable, "-c", "import os, signal, sys; os.kill(os.getpid(), signal.SIGSTOP); "
         "from sqs_processor.cli import main; sys.exit(main(sys.argv[1:]))",
         "--log-format", "json", "run", "--config", str(config)],
        env=env, stdout=log, stderr=log)
    while Path(f"/proc/{processor.pid}/stat").read_text().split()[2] != "T":
        time.sleep(0.01)
    if group:
        (group / "cgroup.procs").write_text(str(processor.pid))
    started = time.monotonic()
    os.kill(processor.pid, signal.SIGCONT)

    def processed() -> int | None:
        try:
            with urllib.request.urlopen("http://127.0.0.1:18080/health", timeout=5) as r:
                return json.load(r)["messages_processed"]
        except OSError as exc:
            body = getattr(exc, "read", lambda: b"")()
            return json.loads(body)["messages_processed"] if body else None

    while processed() is None:
        time.sleep(0.2)
    ready = time.monotonic() - started
    time.sleep(args.warmup)

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{processor.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    count0, cpu0, t0 = processed(), cpu_seconds(), time.monotonic()
    time.sleep(args.seconds)
    count1, cpu1, t1 = processed(), cpu_seconds(), time.monotonic()
    status = Path(f"/proc/{processor.pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM")))
    processor.terminate()
    processor.wait(60)
    stop.set()
    if group:
        group.rmdir()

    done = count1 - count0
    print(json.dumps({
        "cpu_limit_millicores": args.cpu_millis or None,
        "seconds_measured": round(t1 - t0, 1),
        "messages": done,
        "messages_per_second": round(done / (t1 - t0), 1),
        "messages_per_hour": round(done / (t1 - t0) * 3600),
        "cpu_ms_per_message": round((cpu1 - cpu0) / done * 1000, 2) if done else None,
        "cpu_millicores_used": round((cpu1 - cpu0) / (t1 - t0) * 1000),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "seconds_to_first_health_answer": round(ready, 1),
        "exit_code": processor.returncode,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

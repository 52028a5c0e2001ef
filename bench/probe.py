"""A plugin that lets the benchmark measure sqs-processor from the inside.

The harness lists it in the generated pipeline YAML (``plugins: {modules: [bench.probe]}``) and
sets two variables: ``BENCH_PROBE_OUT`` (where to write the figures) and ``BENCH_PROBE_EXPECT``
(how many messages the run must delete). It uses only observer hooks, as any third-party plugin
would:

* ``sqs_processor_startup``: the pipeline is built and its clients exist; the window starts;
* ``sqs_processor_batch_acked``: counts deleted messages; when the expected number is reached,
  the window ends and the figures are written (:mod:`bench.measure`).

The harness then stops the process with SIGTERM. Its cost is one counter update per delete batch.
"""

from __future__ import annotations

import os

from bench.measure import Measurement
from sqs_processor import hookimpl

_MEASUREMENT: Measurement | None = None


def _measurement() -> Measurement | None:
    global _MEASUREMENT
    if _MEASUREMENT is None and os.environ.get("BENCH_PROBE_OUT"):
        _MEASUREMENT = Measurement(os.environ["BENCH_PROBE_OUT"],
                                   int(os.environ.get("BENCH_PROBE_EXPECT", "0")))
    return _MEASUREMENT


@hookimpl
def sqs_processor_startup(pipeline):
    measurement = _measurement()
    if measurement is not None:
        measurement.start()


@hookimpl
def sqs_processor_batch_acked(messages):
    measurement = _measurement()
    if measurement is not None:
        measurement.add(len(messages))

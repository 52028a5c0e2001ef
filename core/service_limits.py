"""The ``service:`` options of the in-flight budget and of the log summary.

Declared here, beside nothing else, and spliced into :data:`sqs_processor.config.SERVICE_OPTIONS`
in their place; :class:`~sqs_processor.inflight.InFlight` and
:class:`~sqs_processor.settlement.Summary` read them.
"""

from __future__ import annotations

from sqs_processor.options import Option

IN_FLIGHT_OPTIONS = (
    Option("max_in_flight", int, 500,
           "Messages received but not yet acknowledged, at most (bounds the work at risk).",
           minimum=1, maximum=10000),
    Option("max_in_flight_mib", int, 64,
           "Memory those messages may take, in MiB, counted as each really costs (its body, "
           "parsed body and encoded document, escapes included); a receive waits for room.",
           minimum=1, maximum=65536),
)

LOG_SUMMARY_OPTION = Option(
    "log_summary_seconds", float, 60.0,
    "How often one INFO line sums up the work (polls, messages per poll, stored, deleted, "
    "errors); per-message lines are DEBUG. 0: no summary.", minimum=0, maximum=86400)

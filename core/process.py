"""What happens to one message: the transforms in YAML order, then the sink.

This is the engine's per-message logic, shared by the runner's worker threads and by the test
kit (:mod:`sqs_processor.testing`), so a plugin tested with the kit meets exactly the rules it
meets in production:

* every transform gets the record the previous one returned; ``None`` drops the message (it is
  acknowledged without being written);
* a transform must return a :class:`~sqs_processor.Record` that still carries the runner's own
  envelope: the message id and receipt handle the acknowledgement needs are not the plugins' to
  change, so a record with another ``message`` is that transform's error;
* an exception (or ``sys.exit()``) in a transform or the sink fails this message only, at a
  stage named ``transform:<name>`` or ``sink:<name>``; the message is not acknowledged and SQS
  redelivers it.

Nothing here touches threads, counters or logs: the caller decides what an outcome means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqs_processor.components import WriteResult
from sqs_processor.message import Message, Record

Step = Callable[[Record], "Record | None"]
StageContext = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Outcome:
    """How one message ended.

    ``status`` is "written" (the sink stored it; ``result.created`` tells a new object from a
    redelivery already stored), "dropped" (a transform returned None) or "failed". ``stage`` names
    the transform that dropped it or the stage that failed; ``error`` is the exception of a
    failure. ``record`` is the record as it reached the sink (None unless written).
    """

    message: Message
    status: str
    stage: str = ""
    error: BaseException | None = None
    record: Record | None = None
    result: WriteResult | None = None


def _no_context(stage: str) -> AbstractContextManager[Any]:
    return nullcontext()


def process_message(
    message: Message,
    transforms: Sequence[tuple[str, Step]],
    sink: Any,
    sink_stage: str,
    stage_context: StageContext | None = None,
) -> Outcome:
    """Run ``message`` through ``transforms`` (name, callable) and ``sink``; never raises for a
    plugin's error.

    ``stage_context(stage)``, when given, is entered around each transform and the sink write (a
    span or a timer); an exception passes through it before it becomes the outcome.
    """
    around = stage_context or _no_context
    record = Record.from_message(message)
    stage = "transform"
    try:
        for name, step in transforms:
            stage = f"transform:{name}"
            with around(stage):
                result = step(record)
                if result is None:
                    return Outcome(message, "dropped", stage)
                if not isinstance(result, Record):
                    raise TypeError(f"returned {type(result).__name__}, expected a Record or None")
                if result.message is not message:
                    raise TypeError("replaced the message envelope; transforms may change "
                                    "record.document, not record.message")
            record = result
        stage = sink_stage
        with around(stage):
            written = sink.write(record)
            if not isinstance(written, WriteResult):
                raise TypeError(f"write() returned {type(written).__name__}, expected a "
                                "WriteResult")
    except (Exception, SystemExit) as exc:  # SystemExit: a plugin calling sys.exit()
        return Outcome(message, "failed", stage, error=exc)
    return Outcome(message, "written", stage, record=record, result=written)

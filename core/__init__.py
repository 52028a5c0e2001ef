"""sqs-processor: a plugin-driven stream processor that archives SQS messages into S3.

Plugin authors need only what this module exports::

    from sqs_processor import hookimpl, TransformSpec, Transform, Record

Everything else (the runner, the config loader, the CLI) is the engine's business.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from sqs_processor.checks import LastCallCheck
from sqs_processor.components import Acker, AckFailure, Sink, Source, Transform, WriteResult
from sqs_processor.errors import ConfigError, MessageError
from sqs_processor.message import Message, Record
from sqs_processor.options import Option
from sqs_processor.records import (
    AckerSpec,
    BuildContext,
    CheckResult,
    HealthCheckSpec,
    SinkSpec,
    SourceSpec,
    TransformSpec,
)

PROJECT_NAME = "sqs_processor"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl`` above a function named after a hook."""

try:
    __version__ = version("sqs-processor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "PROJECT_NAME",
    "AckFailure",
    "Acker",
    "AckerSpec",
    "BuildContext",
    "CheckResult",
    "ConfigError",
    "HealthCheckSpec",
    "LastCallCheck",
    "Message",
    "MessageError",
    "Option",
    "Record",
    "Sink",
    "SinkSpec",
    "Source",
    "SourceSpec",
    "Transform",
    "TransformSpec",
    "WriteResult",
    "__version__",
    "hookimpl",
]

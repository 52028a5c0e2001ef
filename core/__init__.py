"""sqs-processor: a plugin-driven stream processor that archives SQS messages into S3.

This module is the whole public API: everything a plugin author needs is importable from here,
and the built-in plugins and the examples import nothing else from the engine::

    from sqs_processor import hookimpl, TransformSpec, Transform, Record

The test kit is :mod:`sqs_processor.testing`. Everything else (the runner and its units, the
config loader, the CLI) is the engine's business and may change between releases.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from sqs_processor.checks import LastCallCheck
from sqs_processor.components import (
    Acker,
    AckFailure,
    BatchedSink,
    BatchPolicy,
    Sink,
    Source,
    Transform,
    WriteResult,
)
from sqs_processor.errors import (
    CONTROL_CHARACTERS,
    ConfigError,
    MessageError,
    SystemFailure,
    describe_error,
    error_code,
    escape,
    is_system_failure,
)
from sqs_processor.message import IDENTITY_FIELDS, Message, Record
from sqs_processor.options import REQUIRED, Option, check_field_name, validate_options
from sqs_processor.records import (
    AckerSpec,
    BuildContext,
    CheckResult,
    HealthCheckSpec,
    SinkSpec,
    SourceSpec,
    TransformSpec,
)
from sqs_processor.tracing import set_attributes

PROJECT_NAME = "sqs_processor"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl`` above a function named after a hook."""

try:
    __version__ = version("sqs-processor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "CONTROL_CHARACTERS",
    "IDENTITY_FIELDS",
    "PROJECT_NAME",
    "REQUIRED",
    "AckFailure",
    "Acker",
    "AckerSpec",
    "BatchPolicy",
    "BatchedSink",
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
    "SystemFailure",
    "Transform",
    "TransformSpec",
    "WriteResult",
    "__version__",
    "check_field_name",
    "describe_error",
    "error_code",
    "escape",
    "hookimpl",
    "is_system_failure",
    "set_attributes",
    "validate_options",
]

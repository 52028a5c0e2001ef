"""Example drop-in plugin: the ``local_files`` sink writes each record to a local JSON file.

For development: the archive lands in a folder you can read with ``ls`` and ``jq``, laid out as
the S3 sink lays out keys: ``<directory>/YYYY/MM/DD/HH/<message-id>.json``. A relative
``directory`` starts at the config file's folder.

It keeps the sink contract (:class:`sqs_processor.Sink`):

* **idempotent per message id**: the document is written to a temporary file and hard-linked
  into place, which fails if the file exists, so a redelivered message keeps the first file and
  reports ``created=False``; a crash half way leaves a temporary file, never a partial document;
* **thread-safe**: workers write different files, and creating folders tolerates races;
* ``start()`` creates the folder and fails, naming it, when it cannot be written, so a
  misconfigured volume stops the run before any message is received.

Its readiness check (``local_write``) fails while writes fail, and passes after the next
success.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from sqs_processor import (
    REQUIRED,
    BuildContext,
    ConfigError,
    HealthCheckSpec,
    LastCallCheck,
    MessageError,
    Option,
    Record,
    Sink,
    SinkSpec,
    WriteResult,
    hookimpl,
)

OPTIONS = (
    Option("directory", str, REQUIRED,
           "Folder to write to; a relative path starts at the config file's folder."),
    Option("indent", bool, False, "Pretty-print each document (two-space indent)."),
    Option("partition_time", str, "sent",
           "Which time picks the hour folder: `sent` (SQS SentTimestamp) or `received`.",
           choices=("sent", "received")),
)

_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,128}$")


class LocalFileSink(Sink):
    def __init__(self, directory: Path, indent: bool, use_sent_time: bool) -> None:
        self.directory = directory
        self.options = orjson.OPT_INDENT_2 if indent else 0
        self.use_sent_time = use_sent_time
        self.check = LastCallCheck(f"write to {directory}")

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {str(self.directory)!r} is not writable")

    def path_for(self, record: Record) -> Path:
        message = record.message
        if not _MESSAGE_ID.match(message.message_id) or message.message_id in (".", ".."):
            raise MessageError(f"message id {message.message_id!r} cannot be a file name")
        when = (message.sent_at if self.use_sent_time else None) or message.received_at
        return self.directory / f"{when:%Y/%m/%d/%H}" / f"{message.message_id}.json"

    def write(self, record: Record) -> WriteResult:
        path = self.path_for(record)
        try:
            data = orjson.dumps(record.document, option=self.options)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"document cannot be encoded as JSON: {exc}") from None
        temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(data)
            try:
                os.link(temporary, path)  # fails if the file exists: first write wins
                created = True
            except FileExistsError:
                created = False
        except OSError as exc:
            self.check.failed(exc)
            raise
        finally:
            temporary.unlink(missing_ok=True)
        self.check.succeeded()
        return WriteResult(location=str(path), created=created)


def build(options: Mapping[str, Any], context: BuildContext) -> LocalFileSink:
    text = options["directory"].strip()
    if not text:
        raise ConfigError(f"{context.where}.directory", "is empty", expected="a folder")
    directory = Path(text).expanduser()
    if not directory.is_absolute():
        directory = context.base_dir / directory
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{context.where}.directory", "is not a folder", value=text,
                          expected="a folder, or a path where one can be created")
    return LocalFileSink(directory, options["indent"], options["partition_time"] == "sent")


@hookimpl
def sqs_processor_sinks():
    return SinkSpec(
        name="local_files",
        factory=build,
        description="Writes each record to <directory>/YYYY/MM/DD/HH/<message-id>.json.",
        options=OPTIONS,
    )


@hookimpl
def sqs_processor_health_checks(pipeline):
    if isinstance(pipeline.sink, LocalFileSink):
        return HealthCheckSpec(name="local_write", check=pipeline.sink.check,
                               description="The last write to the local folder did not fail.")
    return None

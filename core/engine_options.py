"""The option declarations of the engine's own YAML sections, and the plugin environment names.

``service``, ``errors``, ``aws`` and ``plugins`` are declared here, with every default, and
checked by :mod:`sqs_processor.config`; the generated configuration reference
(:mod:`sqs_processor.docs`) and the JSON Schema (:mod:`sqs_processor.schema`) read the same
declarations. ``telemetry`` is declared in :mod:`sqs_processor.telemetry_settings`.
"""

from __future__ import annotations

from sqs_processor.options import Option

SERVICE_OPTIONS = (
    Option("health_host", str, "0.0.0.0", "Address the health server listens on."),
    Option("health_port", int, 8080, "Port of the health server (0 picks a free port).",
           minimum=0, maximum=65535),
    Option("workers", int, 16, "Threads that run transforms and sink writes concurrently.",
           minimum=1, maximum=256),
    Option("pollers", int, 2,
           "Threads that receive from the source concurrently. A receive that starts while "
           "another is in progress needs room in max_in_flight_mib for a full receive of the "
           "queue's largest messages.",
           minimum=1, maximum=32),
    Option("max_in_flight", int, 500,
           "Messages received but not yet acknowledged, at most (bounds the work at risk).",
           minimum=1, maximum=10000),
    Option("max_in_flight_mib", int, 64,
           "Memory those messages may take, in MiB, counted as each really costs (its body, "
           "parsed body and encoded document, escapes included); a receive waits for room.",
           minimum=1, maximum=65536),
    Option("log_summary_seconds", float, 60.0,
           "How often one INFO line sums up the work (polls, messages per poll, stored, "
           "deleted, errors); per-message lines are DEBUG. 0: no summary.",
           minimum=0, maximum=86400),
    Option("shutdown_grace_seconds", float, 25.0,
           "After SIGTERM, how long in-flight work may take before the rest is released.",
           minimum=0, maximum=3600),
    Option("ack_threads", int, 2,
           "Threads that delete finished messages (each sends one batch of up to 10 at a time).",
           minimum=1, maximum=16),
    Option("heartbeat", bool, True,
           "Extend the visibility of in-flight messages before it expires (12-hour cap)."),
    Option("reload_on_change", bool, True,
           "Reload the pipeline when the config file or a plugin file changes (SIGHUP always "
           "reloads)."),
    Option("stall_seconds", float, 10.0,
           "An AWS call outstanding longer than this (a receive: beyond its long poll) makes "
           "/readyz answer 503 naming it, until it completes.", minimum=1, maximum=3600),
    Option("system_backoff_max_seconds", float, 60.0,
           "Longest pause of polling after a system failure (S3 or SQS down, AccessDenied); "
           "the pause starts at 1 s and doubles.", minimum=1, maximum=3600),
)

ERRORS_OPTIONS = (
    Option("after_receives", int, 0,
           "Hand a message that failed on its own account (a transform raised, the document "
           "cannot be encoded) to the error sink once its receive count reaches this; 0: never, "
           "leave it to the queue's redrive policy.", minimum=0, maximum=1000),
    Option("sink", str, "none",
           "The error sink: none, or a sink name; the main sink's type reuses its options "
           "(bucket) with the errors prefix."),
    Option("prefix", str, "errors/", "Key prefix of error objects (sinks with a prefix)."),
    Option("options", dict, None, "Options for the error sink, over the inherited ones."),
)

AWS_OPTIONS = (
    Option("region", str, None, "AWS region; unset means boto3's own chain (AWS_REGION, profile)."),
    Option("endpoint_url", str, None,
           "Endpoint for every AWS service; unset means boto3's chain (AWS_ENDPOINT_URL_*)."),
    Option("max_attempts", int, 5, "Attempts per AWS call, botocore standard retry mode.",
           minimum=1, maximum=20),
    Option("connect_timeout", float, 10.0, "Seconds to open a connection to AWS.",
           minimum=0.1, maximum=300),
    Option("read_timeout", float, 60.0,
           "Seconds to wait for an AWS response; must exceed the source's long poll.",
           minimum=1, maximum=900),
)

PLUGIN_OPTIONS = (
    Option("paths", list, [],
           "Folders of drop-in plugin files: every `*.py` not starting with `_` is loaded. "
           "Relative paths start at the config file's folder.", items=str),
    Option("modules", list, [],
           "Importable plugins, written `package.module` or `package.module:attribute`.",
           items=str),
    Option("autoload", bool, True,
           "Load the plugins of installed distributions (the `sqs_processor` entry-point "
           "group). `$SQS_PROCESSOR_PLUGINS_AUTOLOAD=false` switches it off too."),
    Option("allow", list, [],
           "When not empty, only plugins with one of these names are loaded; built-ins are "
           "always allowed. `$SQS_PROCESSOR_PLUGINS_ALLOW` (comma-separated) must match too.",
           items=str),
    Option("block", list, [],
           "Plugins never loaded, not even imported: entry-point, distribution, file, module "
           "or built-in names. `$SQS_PROCESSOR_PLUGINS_BLOCK` (comma-separated) adds to it.",
           items=str),
)

ENV_ALLOW = "SQS_PROCESSOR_PLUGINS_ALLOW"
ENV_BLOCK = "SQS_PROCESSOR_PLUGINS_BLOCK"
ENV_AUTOLOAD = "SQS_PROCESSOR_PLUGINS_AUTOLOAD"

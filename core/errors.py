"""Error types the engine and plugins raise, and how they read to a user.

Two families matter:

* :class:`ConfigError` is a mistake in the pipeline YAML, the environment it reads, or a plugin
  the YAML names. It is raised before anything connects to AWS; the CLI prints its one line and
  exits with code 2.
* :class:`MessageError` belongs to a single message (for example its document cannot be encoded).
  The message is left in SQS to be redelivered; other messages keep flowing.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with control characters (line breaks included) written as escapes."""
    return CONTROL_CHARACTERS.sub(
        lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


ECHO_LIMIT = 100
"""Characters of a value an error message quotes; the rest is summed up by its length."""


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters plus the length of the
    value, so a huge value in a config never becomes a huge line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes | list | dict | tuple) else len(text)
    unit = "characters" if isinstance(value, str) else "items" if isinstance(
        value, list | dict | tuple) else "bytes" if isinstance(value, bytes) else "characters"
    return f"{text[:limit]}... ({size:,} {unit})"


# Receipt handles are long opaque base64 tokens (AWS) or long letter runs (emulators); SQS
# quotes them in its error messages ("Value <handle> for parameter ReceiptHandle is invalid").
# A run of 40+ base64 characters whose longest piece between "/" or "+" is 32+ characters is
# taken for a token: paths, ARNs, keys and message ids have short pieces or other separators.
_TOKEN = re.compile(r"[A-Za-z0-9+/=]{40,}")
_PIECE = re.compile(r"[A-Za-z0-9=]{32,}")
REDACTED = "<redacted>"


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` with every one of ``secrets`` (known receipt handles) and every token-like run
    replaced by ``<redacted>``. Used on every AWS error text the service logs, puts on a span
    or stores in the error sink."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    if len(text) < 40:
        return text
    return _TOKEN.sub(lambda m: REDACTED if _PIECE.search(m.group(0)) else m.group(0), text)

_MISSING = object()


class ConfigError(Exception):
    """A configuration problem, reported as one actionable line.

    ``key`` is the dotted path in the YAML (``source.max_messages``), ``value`` the offending
    value as read, ``expected`` what would have been accepted. ``env`` names the environment
    variables the value was interpolated from, so the user knows where to fix it; ``plugin``
    names the plugin (and its file) whose options were being checked, when it is not built in.
    """

    def __init__(
        self,
        key: str,
        problem: str,
        *,
        value: object = _MISSING,
        expected: str | None = None,
        env: tuple[str, ...] = (),
        plugin: str = "",
    ) -> None:
        self.key = key
        self.problem = problem
        self.value = value
        self.expected = expected
        self.env = tuple(env)
        self.plugin = plugin
        super().__init__(str(self))

    def with_env(self, env: tuple[str, ...]) -> ConfigError:
        """Return a copy that names the environment variables behind the value."""
        return ConfigError(self.key, self.problem, value=self.value, expected=self.expected,
                           env=env, plugin=self.plugin)

    def with_plugin(self, plugin: str) -> ConfigError:
        """Return a copy that names the plugin whose options were being checked."""
        return ConfigError(self.key, self.problem, value=self.value, expected=self.expected,
                           env=self.env, plugin=plugin)

    def __str__(self) -> str:
        parts = [f"{cut(self.key, 200)}: " if self.key else ""]
        if self.value is not _MISSING:
            # repr() escapes control characters, so the error stays on one line; a long value
            # is cut to its start and its length.
            parts.append(f"{shorten(self.value)} {self.problem}")
        else:
            parts.append(self.problem)
        if self.expected:
            parts.append(f"; expected {self.expected}")
        if self.env:
            names = ", ".join(f"${name}" for name in self.env)
            parts.append(f" (from {names})")
        if self.plugin:
            parts.append(f" [{self.plugin}]")
        # Keys and problems can quote user text; control characters must not break the line.
        return escape("".join(parts))


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass; ``errors`` holds each one.

    It is a :class:`ConfigError` (its key and problem are the first one's), so code that
    catches one error catches several; the CLI prints each on a line of its own, and ``str()``
    joins them with ``"; "`` for a single log line.
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            for one in error.errors if isinstance(error, ConfigErrors) else (error,):
                if str(one) not in {str(seen) for seen in flat}:
                    flat.append(one)
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors = tuple(flat)
        first = flat[0]
        super().__init__(first.key, first.problem, value=first.value, expected=first.expected,
                         env=first.env, plugin=first.plugin)

    def with_env(self, env: tuple[str, ...]) -> ConfigError:
        return ConfigErrors(e.with_env(env) for e in self.errors)

    def with_plugin(self, plugin: str) -> ConfigError:
        return ConfigErrors(e if e.plugin else e.with_plugin(plugin) for e in self.errors)

    def __str__(self) -> str:
        errors = getattr(self, "errors", ())
        return "; ".join(str(e) for e in errors) if errors else super().__str__()


def each_error(error: ConfigError) -> tuple[ConfigError, ...]:
    """The single problems in ``error``: itself, or each of a :class:`ConfigErrors`."""
    return error.errors if isinstance(error, ConfigErrors) else (error,)


class Unresolved(str):
    """A string whose ``${VAR}`` could not be replaced, kept as written while the rest of the
    config is checked; a problem about this value only repeats the missing variable's."""


class Problems:
    """Collects configuration problems so that one run reports them all.

    ``with problems.collect(): ...`` records a :class:`ConfigError` raised in the block and
    carries on; :meth:`raise_found` raises what was collected (one error as itself, several as
    :class:`ConfigErrors`), leaving out problems at the ``skip`` keys (keys whose value could
    not be read at all) and about an :class:`Unresolved` value: they would say nothing new.
    """

    def __init__(self, skip: Iterable[str] = ()) -> None:
        self.found: list[ConfigError] = []
        self.skip = set(skip)

    def add(self, error: ConfigError) -> None:
        self.found.extend(e for e in each_error(error) if e.key not in self.skip
                          and not isinstance(e.value, Unresolved))

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        try:
            yield
        except ConfigError as exc:
            self.add(exc)

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_found(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise ConfigErrors(self.found)


class MessageError(Exception):
    """A failure that belongs to one message; that message is left for SQS to redeliver."""


class SystemFailure(Exception):
    """A failure that belongs to the system (storage or a service unreachable or refusing us).

    Raise it from a component to say so explicitly; the runner then pauses polling instead of
    failing the message. AWS errors are classified without it (:func:`is_system_failure`).
    """


# AWS error codes that say the service, our identity or our configuration is at fault, not the
# message: retrying the same message elsewhere cannot help, waiting may.
SYSTEM_ERROR_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AllAccessDisabled", "AccountProblem",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
    "InvalidToken", "InvalidClientTokenId", "UnrecognizedClientException", "TokenRefreshRequired",
    "NoSuchBucket", "PermanentRedirect", "InvalidBucketState", "InvalidObjectState",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "KMS.DisabledException",
    "KMS.KMSInvalidStateException", "KMS.AccessDeniedException", "KMS.NotFoundException",
    "KMSKeyNotAccessible", "SlowDown", "ServiceUnavailable", "InternalError", "InternalFailure",
    "RequestTimeout", "RequestTimeoutException", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "RequestThrottled", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "ServiceUnavailableException",
})


def is_system_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the system, not the message, is at fault.

    True for :class:`SystemFailure`, connection and timeout errors below the HTTP layer, missing
    credentials, AWS errors with a code in :data:`SYSTEM_ERROR_CODES` and any HTTP 5xx or 403.
    False for :class:`MessageError` and everything else (a bug in a transform, a document that
    cannot be encoded).
    """
    if isinstance(exc, MessageError):
        return False
    if isinstance(exc, SystemFailure):
        return True
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(exc, boto.HTTPClientError | boto.ConnectionError | boto.NoCredentialsError |
                  boto.PartialCredentialsError | boto.CredentialRetrievalError |
                  boto.NoRegionError):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        if error_code(exc) in SYSTEM_ERROR_CODES:
            return True
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and (status >= 500 or status == 403):
            return True
    return False


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def describe_error(exc: BaseException, path: Path | None = None) -> str:
    """One line for an exception: ``Code: message`` for AWS errors, ``Type: message`` otherwise.

    With ``path``, the line number of the innermost frame in that file is added, so an error in
    a plugin file points at its line. Token-like runs (receipt handles that SQS quotes in its
    messages) are redacted (:func:`redact`).
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        message = response["Error"].get("Message") or ""
        text = f"{error_code(exc)}: {message}".rstrip(": ")
    elif isinstance(exc, SyntaxError) and exc.lineno:
        text = f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if path is not None:
            lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
                     if Path(f.filename) == path]
            if lines:
                text += f" (line {lines[-1]})"
    return redact(" ".join(text.split()))

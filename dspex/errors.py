"""The one exception tree of dspex.

Every error dspex raises on purpose derives from :class:`DSPExError`. Errors
from libraries (httpx, aiokafka, pydantic, subprocess) are translated where
they enter dspex with ``raise ... from exc``, so callers catch dspex types only
and the original cause stays on ``__cause__``.

::

    DSPExError                      base; ``retryable`` says whether trying again may help
    ├── ConfigurationError          a setting or argument is invalid
    ├── SignatureError              a signature (string or class form) is malformed
    ├── InputError                  a program got missing, unexpected or mistyped inputs
    ├── AdapterParseError           an LM completion could not be parsed into output fields
    ├── ToolError                   a ReAct tool raised, or was called with bad arguments
    ├── StateError                  saved program state or a program spec cannot be loaded
    ├── WireFormatError             a Kafka record is not valid JSON or not a known schema
    ├── ProgramNotFoundError        no registered program (or version) with that id
    ├── LMError                     a language-model call failed (provider, model, status)
    │   ├── LMRateLimitError        HTTP 429; ``retry_after`` from the server when given
    │   ├── LMAuthError             HTTP 401/403: bad or missing credentials
    │   ├── LMBadRequestError       HTTP 400/404/422: the request itself is wrong
    │   ├── LMServerError           HTTP 5xx
    │   ├── LMTimeoutError          no answer within the timeout
    │   ├── LMConnectionError       the endpoint cannot be reached
    │   ├── LMResponseError         a 200 answer with a malformed or empty body
    │   └── CircuitOpenError        the breaker for this provider+model is open; fail fast
    ├── DeadlineExceededError       an answer did not arrive within its deadline
    ├── OptimizationError           an optimizer cannot go on (every candidate or example failed)
    ├── PrometheusError             Prometheus' HTTP API does not answer or refused a query
    └── LocalServiceError           a local development service (broker, LM server) failed
        ├── KafkaAuthError          Kafka refused the client's credentials (SASL or TLS)
        ├── JavaNotFoundError       no usable Java runtime for the Kafka broker
        ├── PortInUseError          the port a service needs is taken by another process
        ├── DependencyFetchError    Maven could not resolve the Kafka broker jars
        ├── ModelFileError          the GGUF model file is missing, unreadable or not GGUF
        ├── ServiceStartError       the service process exited while starting
        ├── StartupTimeoutError     the service did not become ready within its timeout
        └── ServiceStopError        the service did not stop within its timeout

Messages are one line, name the thing that failed (a path, a port, a
command) and never contain credentials. :func:`error_type` names an error
with the stable code that results and scored outputs carry (``parse_error``,
``lm_unavailable``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AdapterParseError",
    "CircuitOpenError",
    "ConfigurationError",
    "DSPExError",
    "DeadlineExceededError",
    "DependencyFetchError",
    "InputError",
    "JavaNotFoundError",
    "KafkaAuthError",
    "LMAuthError",
    "LMBadRequestError",
    "LMConnectionError",
    "LMError",
    "LMRateLimitError",
    "LMResponseError",
    "LMServerError",
    "LMTimeoutError",
    "LocalServiceError",
    "ModelFileError",
    "OptimizationError",
    "PortInUseError",
    "ProgramNotFoundError",
    "PrometheusError",
    "ServiceStartError",
    "ServiceStopError",
    "SignatureError",
    "StartupTimeoutError",
    "StateError",
    "ToolError",
    "WireFormatError",
    "error_type",
]


class DSPExError(Exception):
    """Base class of every error raised by dspex."""

    #: Whether the same operation may succeed if tried again unchanged.
    retryable: bool = False


class ConfigurationError(DSPExError):
    """A setting, argument or file given to dspex is invalid."""


class SignatureError(DSPExError):
    """A signature is malformed: bad string form, bad field, or no fields at all."""


class InputError(DSPExError):
    """A program was called with missing, unexpected or mistyped inputs.

    Attributes:
        fields: The input field names at fault.
    """

    def __init__(self, message: str, *, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class AdapterParseError(DSPExError):
    """An LM completion could not be parsed into the signature's output fields.

    Attributes:
        adapter: Which adapter failed, e.g. ``"chat"`` or ``"json"``.
        field: The output field that failed, or None if the whole completion did.
        completion: The raw completion text.
    """

    retryable = True

    def __init__(
        self, message: str, *, adapter: str, completion: str, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.adapter = adapter
        self.field = field
        self.completion = completion


class ToolError(DSPExError):
    """A ReAct tool raised, or the LM called it with arguments it does not accept.

    Attributes:
        tool: The tool's name.
    """

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class StateError(DSPExError):
    """Saved program state or a program spec is invalid or does not fit the program."""


class WireFormatError(DSPExError):
    """A Kafka record's bytes are not UTF-8 JSON, or not a known record schema.

    Attributes:
        reason: A short machine-readable reason, e.g. ``"invalid_json"``,
            ``"unknown_schema"``, ``"invalid_record"``, ``"too_large"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProgramNotFoundError(DSPExError):
    """No program with this id (or no such version of it) is registered.

    Attributes:
        program_id: The id asked for.
        version: The version asked for, or None for the active one.
    """

    def __init__(self, message: str, *, program_id: str, version: int | None = None) -> None:
        super().__init__(message)
        self.program_id = program_id
        self.version = version


class LMError(DSPExError):
    """A call to a language model failed.

    Attributes:
        provider: The provider kind, e.g. ``"openai"`` or ``"anthropic"``.
        model: The model name, when known.
        status: The HTTP status code, when the server answered.
        retry_after: Seconds the server asked to wait, when it said.
        request_id: The dspex request the call belonged to, when known.
    """

    #: Whether this kind of failure may pass when retried.
    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.default_retryable


class LMRateLimitError(LMError):
    """HTTP 429: too many requests or tokens."""


class LMAuthError(LMError):
    """HTTP 401 or 403: credentials missing, wrong or not allowed."""

    default_retryable = False


class LMBadRequestError(LMError):
    """HTTP 400, 404 or 422: the request is wrong (model name, parameters, size)."""

    default_retryable = False


class LMServerError(LMError):
    """HTTP 5xx from the provider."""


class LMTimeoutError(LMError):
    """The provider did not answer within the timeout."""


class LMConnectionError(LMError):
    """The provider's endpoint could not be reached."""


class LMResponseError(LMError):
    """HTTP 200 with a body that is not a usable completion (malformed, empty)."""


class CircuitOpenError(LMError):
    """The circuit breaker for this provider and model is open; the call was not made."""


class DeadlineExceededError(DSPExError):
    """An answer did not arrive within its deadline."""

    retryable = True

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class OptimizationError(DSPExError):
    """An optimizer or evaluation cannot produce a meaningful result.

    Raised instead of reporting a silent zero: the metric raised on every
    example, the trainset lacks the labels the metric needs, or every
    candidate program failed.
    """


class PrometheusError(DSPExError):
    """Prometheus' HTTP API does not answer, or refused a query.

    Attributes:
        url: The base URL of the Prometheus server.
    """

    retryable = True

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class LocalServiceError(DSPExError):
    """A local development service (Kafka broker, LM server) failed.

    Attributes:
        service: Which service, e.g. ``"kafka broker"`` or ``"lm server"``.
        log_path: The service's log file, when there is one to read.
    """

    def __init__(self, message: str, *, service: str, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.log_path = log_path


class KafkaAuthError(LocalServiceError):
    """Kafka refused the client's credentials: a SASL login or a TLS handshake failed.

    The message names the brokers, the user or certificate and the broker's
    reason; never the password. ``dspex`` commands exit with code 4 on it.
    """


class JavaNotFoundError(LocalServiceError):
    """No Java runtime (17 or newer) was found for the Kafka broker."""


class PortInUseError(LocalServiceError):
    """A port the service must listen on is already taken by another process."""

    def __init__(self, message: str, *, service: str, host: str, port: int) -> None:
        super().__init__(message, service=service)
        self.host = host
        self.port = port


class DependencyFetchError(LocalServiceError):
    """Maven could not resolve the Kafka broker and its dependencies."""

    retryable = True


class ModelFileError(LocalServiceError):
    """The model file for the LM server is missing, unreadable or not a GGUF file."""

    def __init__(self, message: str, *, path: Path | None) -> None:
        super().__init__(message, service="lm server")
        self.path = path


class ServiceStartError(LocalServiceError):
    """The service process exited before it became ready."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        log_path: Path | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, service=service, log_path=log_path)
        self.exit_code = exit_code


class StartupTimeoutError(LocalServiceError):
    """The service did not become ready within its startup timeout."""

    retryable = True

    def __init__(
        self, message: str, *, service: str, timeout_s: float, log_path: Path | None = None
    ) -> None:
        super().__init__(message, service=service, log_path=log_path)
        self.timeout_s = timeout_s


class ServiceStopError(LocalServiceError):
    """The service did not stop within its shutdown timeout."""


def error_type(exc: BaseException) -> str:
    """The stable code for ``exc`` that results and scored outputs carry.

    ``unknown_program``/``unknown_version``, ``invalid_request`` (a record
    that breaks its schema), ``invalid_inputs``,
    ``parse_error``, ``tool_error``, ``lm_rate_limited``, ``lm_unavailable``
    (timeout, connection, open circuit), ``lm_error``, ``deadline_exceeded``;
    anything else — a bug or a setting of the process — is ``internal``.

    Example:
        >>> error_type(InputError("missing `question`", fields=["question"]))
        'invalid_inputs'
    """
    if isinstance(exc, ProgramNotFoundError):
        return "unknown_program" if exc.version is None else "unknown_version"
    for kind, code in _ERROR_TYPES:
        if isinstance(exc, kind):
            return code
    return "internal"


_ERROR_TYPES: tuple[tuple[type[DSPExError], str], ...] = (
    (WireFormatError, "invalid_request"),
    (InputError, "invalid_inputs"),
    (AdapterParseError, "parse_error"),
    (ToolError, "tool_error"),
    (LMRateLimitError, "lm_rate_limited"),
    (CircuitOpenError, "lm_unavailable"),
    (LMTimeoutError, "lm_unavailable"),
    (LMConnectionError, "lm_unavailable"),
    (LMError, "lm_error"),
    (DeadlineExceededError, "deadline_exceeded"),
)

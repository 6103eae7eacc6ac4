"""A declarative deployment: which programs a worker serves, with which LMs and limits.

A topology is a Python object or a YAML/JSON file::

    name: demo
    kafka:
      bootstrap_servers: 127.0.0.1:9092
    topics:
      prefix: dspex
      partitions: 6
    lms:
      local:
        provider: openai
        model: smollm2-135m-instruct
        base_url: http://127.0.0.1:8080/v1
        rate_limit: {requests_per_minute: 600}
    default_lm: local
    programs: all              # or a list of program ids
    inflight_limit: 32
    request_timeout_s: 120

API keys never appear in a topology: an endpoint names the environment
variable (``api_key_env``) or secret file (``api_key_file``) that holds its key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dspex._validation import describe_validation_error
from dspex.errors import ConfigurationError
from dspex.programs.lm import (
    LM,
    AnthropicChat,
    CircuitBreakerPolicy,
    OpenAIChat,
    RateLimit,
    RetryPolicy,
)
from dspex.topologies.settings import KafkaSettings, TopicSettings

__all__ = ["LMEndpoint", "LMPool", "OptimizerConfig", "Topology"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimitConfig(_Config):
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)


class LMEndpoint(_Config):
    """One LM endpoint and its call policies."""

    provider: Literal["openai", "anthropic"] = "openai"
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_connections: int = Field(100, ge=1)
    max_attempts: int | None = Field(
        None, ge=1, description="Calls per request; None: retry until the request's deadline."
    )
    rate_limit: RateLimitConfig | None = None
    breaker_failures: int = Field(
        5, ge=1, description="Failures within the window before the breaker may open."
    )
    breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of the window's calls that must have failed."
    )
    breaker_window_s: float = Field(30.0, gt=0)
    breaker_recovery_s: float = Field(30.0, gt=0)
    breaker_when_open: Literal["wait", "fail"] = Field(
        "wait",
        description=(
            "wait: requests wait for the LM to recover (the worker stops consuming; "
            "only a request whose deadline passes ends as lm_unavailable); "
            "fail: they end as lm_unavailable at once."
        ),
    )

    def build(self) -> LM:
        """An LM client with these settings (the caller closes it)."""
        rate_limit = None
        if self.rate_limit is not None:
            rate_limit = RateLimit(**self.rate_limit.model_dump(exclude_none=True))
        options: dict[str, Any] = {
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "api_key_file": self.api_key_file,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout_s": self.timeout_s,
            "max_connections": self.max_connections,
            "retry": RetryPolicy(max_attempts=self.max_attempts),
            "rate_limit": rate_limit,
            "circuit_breaker": CircuitBreakerPolicy(
                failure_threshold=self.breaker_failures,
                failure_rate=self.breaker_failure_rate,
                window_s=self.breaker_window_s,
                recovery_timeout_s=self.breaker_recovery_s,
                when_open=self.breaker_when_open,
            ),
        }
        client_class = OpenAIChat if self.provider == "openai" else AnthropicChat
        return client_class(**options)


class OptimizerConfig(_Config):
    """How the optimizer service (``dspex optimizer serve``) runs its jobs.

    Args:
        margin: Default promotion margin: a candidate becomes the active
            version only if its valset score beats the active version's by at
            least this much (and by more than nothing). A command may override it.
        max_jobs: Jobs that run at once; further jobs wait their turn.
        eval_max_outstanding: Examples of one evaluation sent and not yet scored.
        eval_idle_timeout_s: An evaluation fails when no score arrives for this long.
        trace_capacity: Production requests and results remembered to join
            with feedback (oldest forgotten first).
        metrics_port: Serve the service's Prometheus ``/metrics`` here.
    """

    margin: float = Field(0.01, ge=0.0, le=1.0)
    max_jobs: int = Field(2, ge=1)
    eval_max_outstanding: int = Field(256, ge=1)
    eval_idle_timeout_s: float = Field(300.0, gt=0)
    trace_capacity: int = Field(20_000, ge=100)
    metrics_port: int | None = Field(None, ge=0, le=65535)


class Topology(_Config):
    """What one kind of worker serves and how.

    Args:
        name: Names the deployment (and the workers' consumer groups,
            ``<name>-inference`` and ``<name>-evaluation``).
        programs: ``"all"`` registered programs, or a list of program ids.
        lms: LM endpoints by name.
        default_lm: The endpoint programs use unless ``program_lms`` says otherwise.
        program_lms: Program id → endpoint name.
        inflight_limit: Most requests one worker runs at once; when reached,
            it stops fetching rather than buffering.
        request_timeout_s: Longest a request may run (its own deadline may be sooner).
        metrics_port: Serve Prometheus ``/metrics`` here (None: not served).
        metrics_host: Interface for ``/metrics``; loopback unless a scraper is remote.
        session_timeout_s: How long the group waits for a silent worker before
            its partitions move to the others (the failover time after a crash).
        commit_interval_s: Seconds between commits of a worker's consumed
            offsets. After a crash the next owner re-runs what was in flight and
            what was answered since the last commit: shorter means fewer repeated
            LM calls, at some CPU per commit (README, "On Kafka").
        processing_guarantee: ``at_least_once`` (the default): a crash repeats
            what the dead worker had not committed, and readers drop repeats by
            request id. ``exactly_once``: each partition's results, events and
            dead letters are produced in one Kafka transaction with their
            offsets, every ``commit_interval_s``; a reader with
            ``isolation_level=read_committed`` (every dspex reader) sees each
            result once. Results become visible at the commit round, so
            latency grows by up to ``commit_interval_s`` (docs/reliability.md).
        stop_timeout_s: Longest a worker's graceful stop may take after SIGTERM or
            Ctrl-C; past it, the worker logs what it was still waiting on and
            exits with status 3 (uncommitted records are read again by the
            next owner). Requests in flight get four fifths of it to finish,
            on a stop and when a rebalance takes their partitions away.
        optimizer: Settings of the optimizer service of this deployment.
        event_loop: ``uvloop`` (the default, where installed) or ``asyncio``
            for the worker's and the optimizer service's event loop.
    """

    name: str = Field("dspex", pattern=r"^[A-Za-z0-9._-]+$")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    lms: dict[str, LMEndpoint] = Field(default_factory=dict)
    default_lm: str | None = None
    program_lms: dict[str, str] = Field(default_factory=dict)
    programs: Literal["all"] | list[str] = "all"
    inflight_limit: int = Field(32, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    session_timeout_s: float = Field(10.0, ge=6.0, le=300.0)
    commit_interval_s: float = Field(0.1, ge=0.01, le=60.0)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    stop_timeout_s: float = Field(30.0, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="after")
    def _lm_names_exist(self) -> Topology:
        names = set(self.lms)
        wanted = {self.default_lm} if self.default_lm else set()
        wanted |= set(self.program_lms.values())
        unknown = sorted(wanted - names)
        if unknown:
            raise ValueError(f"unknown LM endpoint(s) {unknown}; defined: {sorted(names)}")
        if self.lms and self.default_lm is None and len(self.lms) > 1:
            raise ValueError("several LM endpoints: say which is default_lm")
        return self

    def serves(self, program_id: str) -> bool:
        return self.programs == "all" or program_id in self.programs

    def lm_name_for(self, program_id: str) -> str | None:
        if program_id in self.program_lms:
            return self.program_lms[program_id]
        return self.default_lm or next(iter(self.lms), None)

    @classmethod
    def from_file(cls, path: str | Path) -> Topology:
        """Load a topology from YAML (``.yaml``/``.yml``) or JSON.

        Raises:
            ConfigurationError: The file is missing, not parseable, or invalid;
                the message names the file and the fields at fault.
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read topology {file}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
        except (yaml.YAMLError, ValueError) as exc:
            problem = str(exc).replace("\n", " ")
            raise ConfigurationError(f"topology {file} is not valid: {problem}") from exc
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            problems = describe_validation_error(exc, whole="topology")
            raise ConfigurationError(f"topology {file}: {problems}") from exc


class LMPool:
    """The LM clients of a topology's endpoints: built on first use, shared, closed together."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._clients: dict[str, LM] = {}

    def for_program(self, program_id: str) -> LM | None:
        """The client of the endpoint ``program_id`` uses; None if it is not served."""
        if not self.topology.serves(program_id):
            return None
        name = self.topology.lm_name_for(program_id)
        if name is None:
            return None
        if name not in self._clients:
            self._clients[name] = self.topology.lms[name].build()
        return self._clients[name]

    def clients(self) -> list[LM]:
        return list(self._clients.values())

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

"""The response cache: an in-memory LRU, optionally backed by SQLite on disk.

Keys are :meth:`LMRequest.cache_key` (a hash of everything that determines a
completion, which by construction holds no credentials); values are
:class:`LMResponse` JSON, which holds none either. The disk store lets a
rerun of an evaluation or optimization skip every call it already paid for.

Disk access runs in asyncio's default executor so a slow disk never stalls
the event loop, and a broken cache file degrades to a miss with a warning
rather than failing the call.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from dspex.errors import ConfigurationError
from dspex.programs.lm.types import LMRequest, LMResponse

__all__ = ["ResponseCache", "ResponseCacheStore", "is_cacheable"]

logger = logging.getLogger(__name__)

_DB_NAME = "lm-cache.sqlite3"


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseCache:
    """Settings of an LM client's response cache.

    Only deterministic calls are cached: temperature 0, or any temperature
    when the call carries a ``rollout_id`` (which names one sample).

    Args:
        max_entries: Responses kept in memory (least recently used dropped first).
        directory: When set, responses are also stored in a SQLite file in this
            directory and survive the process. Several clients (and processes)
            may share one directory.

    Example:
        >>> ResponseCache(max_entries=10_000, directory=None).max_entries
        10000
    """

    max_entries: int = 1024
    directory: Path | None = None

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {self.max_entries}")


def is_cacheable(request: LMRequest) -> bool:
    """Deterministic calls only: temperature 0, or a sample named by a rollout id."""
    # None means "the provider's default", which samples on every provider we know.
    return request.rollout_id is not None or request.temperature == 0


class _DiskStore:
    """A key → JSON table in one SQLite file.

    Each operation opens its own short-lived connection: operations run on
    executor threads (SQLite connections must not be shared between threads
    without a lock that would serialise them), there is nothing to close when
    the client closes, and WAL mode lets processes share the file.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / _DB_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS responses ("
                    " key TEXT PRIMARY KEY, response TEXT NOT NULL, stored_at REAL NOT NULL)"
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(f"cannot open the LM cache in {directory}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def get(self, key: str) -> str | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, payload: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO responses (key, response, stored_at) VALUES (?, ?, ?)",
                (key, payload, time.time()),
            )


class ResponseCacheStore:
    """The cache itself, as used by one client.

    Args:
        settings: Size and optional directory.
    """

    def __init__(self, settings: ResponseCache) -> None:
        self.settings = settings
        self._memory: OrderedDict[str, LMResponse] = OrderedDict()
        self._disk = _DiskStore(settings.directory) if settings.directory is not None else None

    @property
    def path(self) -> Path | None:
        """The SQLite file, when the cache is on disk."""
        return None if self._disk is None else self._disk.path

    def __len__(self) -> int:
        return len(self._memory)

    async def get(self, key: str) -> LMResponse | None:
        """The stored response for ``key``, or None."""
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        if self._disk is None:
            return None
        try:
            payload = await asyncio.to_thread(self._disk.get, key)
        except sqlite3.Error as exc:
            logger.warning("LM cache read failed, treating as a miss: %s", exc)
            return None
        if payload is None:
            return None
        try:
            response = LMResponse.model_validate_json(payload)
        except ValidationError:
            logger.warning("LM cache entry %s is unreadable; ignoring it", key[:12])
            return None
        self._remember(key, response)
        return response

    async def put(self, key: str, response: LMResponse) -> None:
        """Store ``response`` under ``key`` (in memory, and on disk when configured)."""
        self._remember(key, response)
        if self._disk is None:
            return
        try:
            await asyncio.to_thread(self._disk.put, key, response.model_dump_json())
        except sqlite3.Error as exc:
            logger.warning("LM cache write failed; the response is cached in memory only: %s", exc)

    def _remember(self, key: str, response: LMResponse) -> None:
        self._memory[key] = response
        self._memory.move_to_end(key)
        while len(self._memory) > self.settings.max_entries:
            self._memory.popitem(last=False)

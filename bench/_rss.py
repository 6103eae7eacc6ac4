"""Resident memory of running processes, sampled while a run makes progress.

The memory benchmarks start the processes they measure (a submitter, a
worker) and, every half second and whenever the run reports progress, read
each one's resident set size (``VmRSS`` in ``/proc/PID/status``, Linux)
together with how far the run got, as the submitter reports it on stderr.
From the samples a profile per process: RSS when given shares of the work
were done (10 %, 50 % and 90 % by default), the growth from the first to the
last of them, the median in between, and the peak (the kernel's high-water
mark ``VmHWM``, which includes start-up; for the process whose exit ends the
sampling, also its ``ru_maxrss`` as it is reaped, so its last moments are
not missed). Flat memory means the growth and the peak do not scale with the
size of the run.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    "CHECKPOINTS",
    "Progress",
    "Sample",
    "Sampling",
    "at_progress",
    "mb",
    "rss_kb",
    "sample_until_exit",
]

#: Progress points (percent of the work done) at which RSS is reported.
CHECKPOINTS = (10, 50, 90)


def rss_kb(pid: int, key: str = "VmRSS") -> int | None:
    """A ``/proc/PID/status`` memory figure in kB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def mb(kb: float) -> float:
    """kB as MB, one decimal."""
    return round(kb / 1024, 1)


@dataclass
class Progress:
    """How much work a process reports done, read from its output by a thread.

    ``pattern``'s first group is the count done. Each reading is kept with
    the monotonic time it was read (``marks``), for rates; other lines are
    kept for error messages. ``updated`` is set at each reading, so that a
    sampler can take a sample at once: the last reading may come moments
    before the process exits.
    """

    pattern: re.Pattern[str]
    done: int = 0
    marks: list[tuple[float, int]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    updated: threading.Event = field(default_factory=threading.Event)

    def follow(self, stream: IO[str]) -> threading.Thread:
        """Read ``stream`` to its end in a daemon thread (returned, started)."""
        reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        reader.start()
        return reader

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            match = self.pattern.search(line)
            if match:
                self.done = int(match.group(1))
                self.marks.append((time.monotonic(), self.done))
                self.updated.set()
            else:
                self.lines.append(line.rstrip())

    def rate(self) -> float | None:
        """Work per second from the first progress reading to the last (None: too few)."""
        if len(self.marks) < 2:
            return None
        (first_at, first_done), (last_at, last_done) = self.marks[0], self.marks[-1]
        if last_at <= first_at or last_done <= first_done:
            return None
        return (last_done - first_done) / (last_at - first_at)


@dataclass(frozen=True)
class Sample:
    """RSS (kB) of every sampled process at one moment, and the work done by then."""

    at_s: float
    done: int
    rss_kb: Mapping[str, int]


@dataclass
class Sampling:
    """The samples of one run and each process's peak RSS (kB)."""

    samples: list[Sample]
    peak_kb: dict[str, int]
    wall_time_s: float

    def profile(
        self, name: str, total: int, checkpoints: tuple[int, ...] = CHECKPOINTS
    ) -> dict[str, Any]:
        """RSS of process ``name`` at each checkpoint, its growth across them, its peak (MB)."""
        marks = {percent: at_progress(self.samples, total, percent) for percent in checkpoints}
        first, last = marks[checkpoints[0]], marks[checkpoints[-1]]
        window = [s.rss_kb[name] for s in self.samples if first.at_s <= s.at_s <= last.at_s]
        return {
            "rss_mb_at_percent": {str(p): mb(s.rss_kb[name]) for p, s in marks.items()},
            "growth_10_to_90_mb": mb(last.rss_kb[name] - first.rss_kb[name]),
            "median_rss_mb_10_to_90": mb(statistics.median(window)),
            "peak_rss_mb": mb(self.peak_kb[name]),
        }


def at_progress(samples: list[Sample], total: int, percent: int) -> Sample:
    """The first sample taken once ``percent`` of ``total`` was done."""
    for sample in samples:
        if sample.done * 100 >= percent * total:
            return sample
    raise RuntimeError(f"no sample at {percent}% progress ({len(samples)} samples)")


def sample_until_exit(
    processes: Mapping[str, subprocess.Popen[Any]],
    *,
    until: str,
    progress: Progress,
    every_s: float = 0.5,
) -> Sampling:
    """Sample the RSS of ``processes`` until ``processes[until]`` exits.

    A sample is taken every ``every_s``, and at once when ``progress`` moves.
    ``processes[until]`` is reaped here (its ``returncode`` is set), so that its
    ``ru_maxrss`` can count in its peak. A sample is kept only while every
    process is alive.
    """
    watched = processes[until]
    samples: list[Sample] = []
    peak_kb = dict.fromkeys(processes, 0)
    started = time.monotonic()
    while True:
        progress.updated.clear()  # a reading from now on wakes the wait below
        done = progress.done  # read first: the RSS below is at least this far in
        readings = {name: rss_kb(process.pid) for name, process in processes.items()}
        for name, process in processes.items():
            # High-water marks are read while the processes still exist.
            peak_kb[name] = max(peak_kb[name], rss_kb(process.pid, "VmHWM") or 0)
        if all(kb is not None for kb in readings.values()):
            rss = {name: kb for name, kb in readings.items() if kb is not None}
            samples.append(Sample(time.monotonic() - started, done, rss))
        if watched.returncode is None:
            pid, status, usage = os.wait4(watched.pid, os.WNOHANG)
            if pid:
                watched.returncode = os.waitstatus_to_exitcode(status)
                peak_kb[until] = max(peak_kb[until], usage.ru_maxrss)  # kB on Linux
        if watched.returncode is not None:
            return Sampling(samples, peak_kb, time.monotonic() - started)
        progress.updated.wait(every_s)

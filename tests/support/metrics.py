"""Reading a process's Prometheus /metrics page in tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics page, by name and labels (as Prometheus sorts them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def counter_total(port: int, name: str) -> float:
    """The sum of a counter's samples over all its labels (``name`` without ``_total``)."""
    return sum(
        value for sample, value in scrape(port).items() if sample.startswith(f"{name}_total")
    )

"""What a daemon's /metrics declares, for the tests that check dashboards and alert rules
against it: which series names a query may select, and which labels their samples carry."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every scraped series."""
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Exposition:
    """A Prometheus text exposition, read."""

    types: dict[str, str]
    """``# TYPE`` name → type (counters are declared with their ``_total``)."""
    labels: dict[str, frozenset[str]]
    """Sample name → the label names its samples carry."""
    sampled: frozenset[tuple[str, str, str]]
    """(sample name, site, schedule) of every sample."""

    @classmethod
    def parse(cls, text: str) -> Exposition:
        """Read ``text``; every ``# TYPE`` declares series even before it has samples."""
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
        labels: dict[str, set[str]] = {}
        sampled = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
                site, schedule = sample.labels.get("site", ""), sample.labels.get("schedule", "")
                sampled.add((sample.name, site, schedule))
        return cls(
            types, {name: frozenset(names) for name, names in labels.items()}, frozenset(sampled)
        )

    def series_names(self) -> set[str]:
        """Return every sample name a query may select (``_bucket``/``_sum``/``_count`` of a
        histogram, never its bare name, which has no series)."""
        names: set[str] = set()
        for name, kind in self.types.items():
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
            elif kind == "summary":
                names.update((name, f"{name}_sum", f"{name}_count"))
            else:
                names.add(name)
        return names

    def all_labels(self) -> set[str]:
        """Return every label name of every sample, plus Prometheus's target labels."""
        return set(TARGET_LABELS).union(*self.labels.values())

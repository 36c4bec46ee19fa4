"""Reading a /metrics answer the way Prometheus does (prometheus_client's text parser), and the
checks every exposition of ours must pass: each family has HELP and TYPE, each histogram has
buckets, no label named like a target label."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

TARGET_LABELS = {"instance", "job"}  # Prometheus sets these on every scraped series


def families(text: str) -> dict[str, Metric]:
    """The families of an exposition by name, after checking each is well described."""
    out: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type != "unknown", f"{family.name} has no TYPE"
        assert family.name not in out, f"{family.name} twice"
        for sample in family.samples:
            clash = TARGET_LABELS & set(sample.labels)
            assert not clash, f"{sample.name} has label(s) {clash}"
        if family.type == "histogram" and family.samples:  # (a labelled one has none until observed)
            buckets = {s.labels["le"] for s in family.samples if s.name.endswith("_bucket")}
            assert "+Inf" in buckets and len(buckets) > 2, f"{family.name} has no buckets"
        out[family.name] = family
    return out


def value(family: Metric, **labels: str) -> float | None:
    """The value of the family's sample with exactly these labels (None: no such sample)."""
    found = [s.value for s in family.samples if s.labels == labels]
    return found[0] if found else None


def histogram_count(family: Metric, **labels: str) -> float:
    """Observations a histogram counted over the samples matching `labels` (a subset)."""
    return sum(s.value for s in family.samples
               if s.name.endswith("_count") and labels.items() <= s.labels.items())

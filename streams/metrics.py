"""Prometheus text exposition of a worker's counters, gauges and histograms."""

from __future__ import annotations

from typing import Iterable

from stylestream.streams.stats import Histogram, WorkerStats

CONTENT_TYPE = "text/plain"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs.items()) + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {value}" for labels, value in samples]
    return lines


def _histogram(name: str, help_text: str, histogram: Histogram) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for bound, count in zip(histogram.buckets, histogram.counts):
        lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {histogram.count}')
    lines.append(f"{name}_sum {histogram.total}")
    lines.append(f"{name}_count {histogram.count}")
    return lines


def _partition_labels(name: str) -> dict[str, str]:
    topic, _, partition = name.rpartition(":")
    return {"topic": topic, "partition": partition}


def render(stats: WorkerStats, pending_users: int) -> str:
    """Return every stylestream metric in the Prometheus text format."""
    lines: list[str] = []
    lines += _family("stylestream_events_consumed_total", "counter", "Messages consumed per input topic.",
                     [({"topic": topic}, count) for topic, count in sorted(stats.consumed.items())])
    lines += _family("stylestream_events_applied_total", "counter", "Events applied to user state or indexed, per topic.",
                     [({"topic": topic}, count) for topic, count in sorted(stats.applied.items())])
    lines += _family("stylestream_events_duplicate_total", "counter", "Redelivered events skipped by offset, per topic.",
                     [({"topic": topic}, count) for topic, count in sorted(stats.duplicates.items())])
    lines += _family("stylestream_dlq_messages_total", "counter", "Messages sent to dead-letter topics, by reason.",
                     [({"reason": reason}, count) for reason, count in sorted(stats.dead_letters.items())])
    lines += _histogram("stylestream_event_to_upsert_seconds", "Seconds from an event's Kafka timestamp to its user's upsert.",
                        stats.event_to_upsert_seconds)
    lines += _histogram("stylestream_flush_size_users", "Users written per sink flush.", stats.flush_size)
    lines += _histogram("stylestream_flush_duration_seconds", "Duration of successful sink flushes.", stats.flush_seconds)
    lines += _family("stylestream_store_retries_total", "counter", "Failed sink flushes that were retried.", [({}, stats.flush_failures)])
    lines += _family("stylestream_users_upserted_total", "counter", "User points written to Qdrant.", [({}, stats.users_upserted)])
    lines += _family("stylestream_state_writes_total", "counter", "User states written to the table; the changelog gets the newest per commit.",
                     [({}, stats.state_writes)])
    lines += _family("stylestream_records_sent_total", "counter", "Changelog and popularity records the broker accepted, per topic.",
                     [({"topic": topic}, count) for topic, count in sorted(stats.records_sent.items())])
    lines += _family("stylestream_send_failures_total", "counter", "Changelog and popularity records the broker did not accept, per topic.",
                     [({"topic": topic}, count) for topic, count in sorted(stats.send_failures.items())])
    lines += _family("stylestream_images_upserted_total", "counter", "Image points written to Qdrant.", [({}, stats.images_upserted)])
    lines += _family("stylestream_pending_users", "gauge", "Changed users waiting for a flush.", [({}, pending_users)])
    lines += _family("stylestream_consumer_lag", "gauge", "Records not yet committed, per input partition.",
                     [(_partition_labels(name), lag) for name, lag in sorted(stats.partition_lag.items())])
    lines += _family("stylestream_stalled_partitions", "gauge", "Partitions that stopped making progress while lagging.",
                     [({}, len(stats.stalled_partitions))])
    lines += _family("stylestream_table_size_users", "gauge", "Users in this worker's user-state table.", [({}, stats.table_size)])
    return "\n".join(lines) + "\n"

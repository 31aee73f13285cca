"""Prometheus export of the notifier's counters (a collector read at scrape time).

* ``jitgate_notifications_total{sink,type,result}``: deliveries by sink name,
  sink type (``webhook``, ``slack``) and result (``delivered``, ``failed``,
  ``dropped``, ``abandoned``; see :mod:`jitgate.notify.notifier`);
* ``jitgate_notification_retries_total{sink,type}``: attempts retried;
* ``jitgate_notification_queue{sink,type}``: deliveries waiting or in progress.

Register it in a registry: ``registry.register(NotifierCollector(notifier))``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from jitgate.notify.notifier import RESULTS, Notifier


class NotifierCollector:
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def collect(self) -> Iterator[Metric]:
        notifier = self.notifier
        deliveries = CounterMetricFamily(
            "jitgate_notifications",
            "Notification deliveries, by sink, sink type and result.",
            labels=["sink", "type", "result"],
        )
        retries = CounterMetricFamily(
            "jitgate_notification_retries",
            "Notification attempts that were retried, by sink and sink type.",
            labels=["sink", "type"],
        )
        queued = GaugeMetricFamily(
            "jitgate_notification_queue",
            "Notification deliveries waiting or in progress, by sink and sink type.",
            labels=["sink", "type"],
        )
        for sink in notifier.sinks:
            for result in RESULTS:
                deliveries.add_metric(
                    [sink.name, sink.type, result], notifier.counts[sink.name, sink.type, result]
                )
            retries.add_metric([sink.name, sink.type], notifier.retries[sink.name, sink.type])
            queued.add_metric([sink.name, sink.type], len(sink.queue) + sink.busy)
        yield deliveries
        yield retries
        yield queued

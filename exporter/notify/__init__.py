"""Notification receivers: Alertmanager API v2, Slack incoming webhooks and generic webhooks, each behind
its own retrying delivery queue. Alerting uses `Notifier`; the rest is exported for tests and tools."""

from exporter.notify.delivery import Delivery, DeliveryStats
from exporter.notify.notifier import Notifier, synthetic_batch
from exporter.notify.targets import (
    AlertmanagerTarget,
    DeliveryError,
    SlackTarget,
    Target,
    WebhookTarget,
    build_targets,
)

__all__ = [
    "AlertmanagerTarget",
    "Delivery",
    "DeliveryError",
    "DeliveryStats",
    "Notifier",
    "SlackTarget",
    "Target",
    "WebhookTarget",
    "build_targets",
    "synthetic_batch",
]

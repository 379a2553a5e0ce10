"""Notification receivers: Alertmanager API v2, Slack incoming webhooks and generic webhooks."""

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
    "DeliveryError",
    "SlackTarget",
    "Target",
    "WebhookTarget",
    "build_targets",
]

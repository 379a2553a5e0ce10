"""Notification receivers: Alertmanager API v2, Slack incoming webhooks and generic webhooks."""

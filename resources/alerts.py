"""Alerts: Slack when ``SLACK_BOT_TOKEN`` is set, otherwise the Dagster log.

``SLACK_API_URL`` overrides Slack's API base URL (tests point it at a local HTTP server);
``SLACK_CHANNEL`` picks the channel (default ``#data-platform-alerts``);
``DAGSTER_UI_URL`` is used to link runs (default ``http://127.0.0.1:3000``).
"""

from __future__ import annotations

import logging
import os

import dagster as dg
from dagster_slack import SlackResource

log = logging.getLogger("platform.alerts")


def run_url(run_id: str) -> str:
    return f"{os.environ.get('DAGSTER_UI_URL', 'http://127.0.0.1:3000').rstrip('/')}/runs/{run_id}"


class AlertsResource(dg.ConfigurableResource):
    """Posts short operational messages to Slack, or writes them to the log without a token."""

    token: str | None = None
    channel: str = "#data-platform-alerts"
    api_url: str | None = None

    @classmethod
    def from_env(cls) -> AlertsResource:
        return cls(
            token=dg.EnvVar("SLACK_BOT_TOKEN") if os.environ.get("SLACK_BOT_TOKEN") else None,
            channel=os.environ.get("SLACK_CHANNEL", "#data-platform-alerts"),
            api_url=os.environ.get("SLACK_API_URL") or None,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def slack_client(self):
        token = self.token.get_value() if isinstance(self.token, dg.EnvVar) else self.token
        client = SlackResource(token=token).get_client()
        if self.api_url:
            client.base_url = self.api_url.rstrip("/") + "/"
        return client

    def send(self, text: str, logger: logging.Logger | None = None) -> None:
        """Send ``text``; never raises (an alert that fails is logged, not fatal)."""
        out = logger or log
        if not self.enabled:
            out.warning("[alert] %s", text)
            return
        try:
            self.slack_client().chat_postMessage(channel=self.channel, text=text)
        except Exception as exc:  # alerting must not break the pipeline it reports on
            out.error("[alert] could not post to Slack (%s): %s", exc, text)

"""The example project's settings with a test page that follows a topic through
`{% realtime_stream %}` (tests/live_html_urls.py), and a topic history of 3 messages, so that
tests/test_live_html_browser.py can miss more than it holds (DJANGO_SETTINGS_MODULE)."""

from __future__ import annotations

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.live_html_urls"
REALTIME_TOPIC_HISTORY_SIZE = 3

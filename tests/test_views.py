"""The page at / (rendered in-process; the real servers serve it in test_server.py)."""

from __future__ import annotations

import pytest

from realtime import broadcast

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_shows_the_connection_state_element(client):
    response = client.get("/", secure=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="connection"' in html
    assert 'data-state="connecting"' in html
    assert "realtime/page.mjs" in html
    assert 'data-ws-path="/ws/"' in html


def test_it_lists_the_last_broadcasts_of_the_visitors_audience(client):
    for n in range(7):
        broadcast.send(f"note {n}")
    broadcast.send("staff only", audience="staff")
    html = client.get("/", secure=True).content.decode()
    assert "note 6" in html and "note 2" in html
    assert "note 1" not in html  # only the last five
    assert "staff only" not in html
    assert html.index("note 6") < html.index("note 5")  # newest first

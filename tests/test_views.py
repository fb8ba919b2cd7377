"""The page at / (rendered in-process; the real servers serve it in test_server.py)."""

from __future__ import annotations


def test_it_shows_the_connection_state_element(client):
    response = client.get("/", secure=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="connection"' in html
    assert 'data-state="connecting"' in html
    assert "realtime/client.js" in html
    assert 'data-ws-path="/ws/"' in html

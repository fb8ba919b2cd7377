"""Three small holes, each tried as an attacker would: the sign-in 429 page without the security
headers every other page has (realtime/web/signin.py, realtime/web/headers.py), /healthz showing the
raw Redis error (hosts and ports) to anyone (realtime/ops/health.py), and /api/openapi.json
checking tokens with no limit (realtime/api/openapi.py). Real servers over TLS where the
middleware chain or the outage matters; the rate limit in process with a 2 s window."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

import pytest
from django.contrib.auth import get_user_model

from realtime.api import tokens
from realtime.common.rates import OncePerInterval
from realtime.ops import health
from realtime.web import counters
from tests.helpers import BrowserSession, create_user, daphne_tls_args, free_port

SECURITY_HEADERS = ("Content-Security-Policy", "Permissions-Policy", "X-Frame-Options")
METRICS_TOKEN = "m" * 40
WINDOW = 2


# --- The sign-in 429 page -----------------------------------------------------------------------


@pytest.mark.e2e
def test_the_signin_429_page_has_the_headers_of_every_other_page(daphne_tls, client_tls):
    create_user(daphne_tls.env, "gus", staff=False)
    base = f"https://localhost:{daphne_tls.port}"
    with urllib.request.urlopen(f"{base}/accounts/login/", context=client_tls) as page:
        expected = {name: page.headers[name] for name in SECURITY_HEADERS}
    assert all(expected.values()), expected
    attacker = BrowserSession(base, client_tls)
    statuses = [attacker.try_login("gus", f"guess {n}") for n in range(11)]
    assert statuses == [200] * 10 + [429]  # REALTIME_SIGNIN_MAX_PER_ACCOUNT: 10
    with pytest.raises(urllib.error.HTTPError) as refused:
        attacker.post_form("/accounts/login/", {"username": "gus", "password": "again"})
    with refused.value:
        assert refused.value.code == 429
        assert {name: refused.value.headers[name] for name in SECURITY_HEADERS} == expected


# --- /healthz -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(start, redis_server, dev_certs):
    """daphne on the module's Redis; /metrics (and the reasons) open to no address, only to
    the token, so that this test's requests from 127.0.0.1 are the public's."""
    port = free_port()
    return start(
        daphne_tls_args(port, dev_certs),
        port,
        REDIS_URL=redis_server.url,
        REALTIME_METRICS_ALLOWED_ADDRESSES="",
        REALTIME_METRICS_TOKEN=METRICS_TOKEN,
    )


def healthz(port: int, tls, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"https://localhost:{port}/healthz", headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=tls, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def operator_healthz(port: int, tls) -> dict:
    return healthz(port, tls, {"Authorization": f"Bearer {METRICS_TOKEN}"})[1]


def wait_for_healthz(port: int, tls, status: int) -> dict:
    deadline = time.monotonic() + 30
    while (answer := healthz(port, tls))[0] != status:
        assert time.monotonic() < deadline, f"/healthz stayed {answer}"
        time.sleep(0.2)
    return answer[1]


@pytest.mark.e2e
def test_healthz_tells_the_public_down_not_the_redis_error(site, redis_server, client_tls):
    wait_for_healthz(site.port, client_tls, 200)
    redis_server.stop()
    try:
        body = wait_for_healthz(site.port, client_tls, 503)
        again = healthz(site.port, client_tls)[1]
        detailed = operator_healthz(site.port, client_tls)
    finally:
        redis_server.start()
    assert body["checks"]["channel_layer"] == "down" and body["checks"]["database"] == "ok"
    for answer in (body, again):
        assert set(answer["checks"].values()) <= {"ok", "down"}, answer
        text = json.dumps(answer)
        for leak in (str(redis_server.port), "127.0.0.1", "Error", "refused", "redis"):
            assert leak not in text, (leak, text)
    assert str(redis_server.port) in detailed["checks"]["channel_layer"], detailed  # the token
    log = site.log()
    assert log.count("/healthz: channel_layer is down:") == 1, log[-3000:]  # once a minute
    assert "redis://" not in log
    wait_for_healthz(site.port, client_tls, 200)


def test_a_failing_check_is_logged_once_a_minute_and_again_after(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(health, "should_log", OncePerInterval(60, clock=lambda: now[0]))
    failing = {"database": "OperationalError: db.internal:5432 refused", "fanout": None}
    with caplog.at_level(logging.WARNING, logger="realtime.ops.health"):
        for step in (0, 30, 29.9, 0.2):  # the last one past the minute
            now[0] += step
            health.log_failures(failing)
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.ops.health"]
    assert lines == ["/healthz: database is down: OperationalError: db.internal:5432 refused "
                     "(said once a minute)"] * 2  # fmt: skip


# --- /api/openapi.json --------------------------------------------------------------------------


@pytest.fixture
def limited(settings):
    settings.REALTIME_API_RATE_LIMIT, settings.REALTIME_API_RATE_WINDOW = 3, WINDOW
    counters._local.counts.clear()
    yield
    counters._local.counts.clear()


def openapi(client, secret: str | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    return client.get("/api/openapi.json", secure=True, **headers)


@pytest.mark.django_db(transaction=True)
def test_openapi_limits_wrong_tokens_per_address_then_refuses_a_valid_one(
    client, limited, counters_clock
):
    boss = get_user_model().objects.create_user("boss", is_staff=True, is_superuser=True)
    secret = tokens.create("docs", ["topic:*"], created_by=boss)[1]
    guesses = [openapi(client, f"rtk_guess{n}").status_code for n in range(4)]
    assert guesses == [200, 200, 200, 429]
    refused = openapi(client, secret)  # a right token from the same address, in the window
    assert refused.status_code == 429 and refused["Retry-After"] == str(WINDOW)
    assert refused.json()["error"] == "rate_limited"
    publish = client.post(
        "/api/publish", "{}", content_type="application/json", secure=True,
        HTTP_AUTHORIZATION="Bearer rtk_guess",
    )  # fmt: skip
    assert publish.status_code == 429  # one counter for the address, as the publish API's
    assert openapi(client).status_code == 200  # no token: nothing checked, the public document
    counters_clock.advance(WINDOW + 0.2)  # past the window
    document = openapi(client, secret)
    assert document.status_code == 200 and "news" in json.dumps(document.json())

"""Sign-in throttling (realtime/web/signin_throttle.py, signin.py, password_reset.py): per
address, per account, and no lockout of a browser the real user signed in from. In process
with small limits and a 2 s window (the window runs out in the tests), then against a real
daphne over TLS with the defaults."""

from __future__ import annotations

import urllib.error

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from realtime.web import counters, signin_throttle
from realtime.web.counters import LocalCounters, RedisCounters
from realtime.web.signin_throttle import DEVICE_COOKIE
from tests.helpers import BrowserSession, create_user, wait_until

PASSWORD = "correct horse battery staple"
WINDOW = 2


@pytest.fixture
def limits(settings, db):
    settings.REALTIME_SIGNIN_WINDOW = WINDOW
    settings.REALTIME_SIGNIN_MAX_PER_ADDRESS = 6
    settings.REALTIME_SIGNIN_MAX_PER_ACCOUNT = 3
    counters._local.counts.clear()
    get_user_model().objects.create_user("boss", password=PASSWORD, is_staff=True)
    get_user_model().objects.create_user("carol", password=PASSWORD)
    yield
    counters._local.counts.clear()


def sign_in(client: Client, username: str, password: str, address: str, path="/accounts/login/"):
    form = {"username": username, "password": password}
    return client.post(path, form, REMOTE_ADDR=address, secure=True)


def signed_in(response) -> bool:
    return response.status_code == 302


def test_an_account_is_throttled_for_guesses_from_anywhere(limits):
    attacker = Client()
    for n in range(3):
        assert sign_in(attacker, "boss", f"guess {n}", f"198.51.100.{n}").status_code == 200
    refused = sign_in(Client(), "boss", PASSWORD, "203.0.113.9")  # a new browser, right password
    assert refused.status_code == 429
    assert refused["Retry-After"] == str(WINDOW)
    assert "Too many failed sign-ins. Try again in 1 minutes" in refused.content.decode()
    assert "_auth_user_id" not in refused.wsgi_request.session


def test_a_browser_the_user_signed_in_from_is_not_locked_out(limits):
    own = Client()
    assert signed_in(sign_in(own, "boss", PASSWORD, "203.0.113.9"))
    assert DEVICE_COOKIE in own.cookies
    own.post("/accounts/logout/", secure=True)
    attacker = Client()
    for n in range(10):
        sign_in(attacker, "boss", f"guess {n}", f"198.51.100.{n}")
    assert signed_in(sign_in(own, "boss", PASSWORD, "203.0.113.9"))
    # The browser's own failures still count, on its own counter.
    own.post("/accounts/logout/", secure=True)
    for n in range(3):
        sign_in(own, "boss", f"typo {n}", "203.0.113.9")
    assert sign_in(own, "boss", PASSWORD, "203.0.113.9").status_code == 429


def test_an_address_is_throttled_across_accounts_and_others_are_not(limits):
    client = Client()
    for n in range(6):
        sign_in(client, f"user{n}", "guess", "192.0.2.50")
    assert sign_in(Client(), "carol", PASSWORD, "192.0.2.50").status_code == 429
    assert signed_in(sign_in(Client(), "carol", PASSWORD, "192.0.2.51"))


def test_ipv6_addresses_are_counted_by_their_64(limits):
    for n in range(6):
        sign_in(Client(), f"user{n}", "guess", f"2001:db8:5:6::{n + 1}")
    assert sign_in(Client(), "carol", PASSWORD, "2001:db8:5:6::abcd").status_code == 429
    assert signed_in(sign_in(Client(), "carol", PASSWORD, "2001:db8:5:7::1"))


def test_the_admin_login_page_is_throttled_too(limits):
    for n in range(3):
        sign_in(Client(), "boss", f"guess {n}", "198.51.100.7", path="/admin/login/")
    refused = sign_in(Client(), "boss", PASSWORD, "203.0.113.9", path="/admin/login/")
    assert refused.status_code == 429


def test_the_throttle_ends_with_its_window(limits, counters_clock):
    for n in range(3):
        sign_in(Client(), "boss", f"guess {n}", "198.51.100.8")
    assert sign_in(Client(), "boss", PASSWORD, "203.0.113.9").status_code == 429
    counters_clock.advance(WINDOW + 0.5)
    assert signed_in(sign_in(Client(), "boss", PASSWORD, "203.0.113.9"))


def test_password_reset_is_not_served_without_a_mail_server(client, db):
    assert client.get("/accounts/password_reset/", secure=True).status_code == 404


@pytest.mark.urls("tests.reset_urls")
def test_password_reset_is_throttled_per_address_when_mail_is_set(limits, mailoutbox, settings):
    get_user_model().objects.filter(username="carol").update(email="carol@example.test")
    statuses = [
        Client()
        .post("/reset/", {"email": "carol@example.test"}, REMOTE_ADDR="192.0.2.60", secure=True)
        .status_code
        for _ in range(7)
    ]
    assert statuses == [302] * 6 + [429]
    assert len(mailoutbox) == 6


# --- On Redis: shared, atomic, with its window ------------------------------------------------


def test_redis_counts_parallel_failures_each_and_forgets_them_after_the_window(redis_server):
    from concurrent.futures import ThreadPoolExecutor

    import redis

    store = RedisCounters(redis.Redis.from_url(redis_server.url))
    keys = ["realtime:signin:test:a", "realtime:signin:test:b"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: store.increment(keys, WINDOW), range(40)))
    assert store.get(keys) == [40, 40]  # read-modify-write would have lost some
    assert sorted(a for a, _ in answers) == list(range(1, 41))  # each saw its own count
    wait_until(lambda: store.get(keys) == [0, 0], "Redis to forget the counts", WINDOW + 1, 0.05)
    assert store.increment(keys[:1], WINDOW) == [1]
    assert store.get(keys) == [1, 0]


def test_local_counters_answer_the_counts_and_forget_them_after_the_window():
    now = [100.0]
    store = LocalCounters(clock=lambda: now[0])
    assert [store.increment(["a", "b"], 5) for _ in range(3)][-1] == [3, 3]
    now[0] += 5.1  # past the window
    assert store.get(["a"]) == [0]
    assert store.increment(["a"], 5) == [1]


def test_a_redis_that_does_not_answer_does_not_refuse_sign_ins(limits, settings):
    import redis

    broken = RedisCounters(redis.Redis(port=1, socket_connect_timeout=1))
    settings.REALTIME_SIGNIN_MAX_PER_ACCOUNT = 1
    original = signin_throttle.counters_store
    signin_throttle.counters_store = lambda: broken
    try:
        sign_in(Client(), "boss", "guess", "198.51.100.9")
        assert signed_in(sign_in(Client(), "boss", PASSWORD, "198.51.100.9"))
    finally:
        signin_throttle.counters_store = original


# --- Against a real server --------------------------------------------------------------------


@pytest.mark.e2e
def test_a_real_server_refuses_the_eleventh_guess_with_429(daphne_tls, client_tls):
    password = create_user(daphne_tls.env, "eve", staff=True)
    attacker = BrowserSession(f"https://localhost:{daphne_tls.port}", client_tls)
    for n in range(10):
        status, html = attacker.post_form(
            "/accounts/login/", {"username": "eve", "password": f"guess {n}"}
        )
        assert status == 200 and "didn" in html  # the form again, with its error
    owner = BrowserSession(f"https://localhost:{daphne_tls.port}", client_tls)
    with pytest.raises(urllib.error.HTTPError) as refused:
        owner.post_form("/accounts/login/", {"username": "eve", "password": password})
    assert refused.value.code == 429
    assert "Try again in 15 minutes" in refused.value.read().decode()

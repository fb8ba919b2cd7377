"""A project's own Channels consumer beside /ws/ (websocket_application(routes=...)), in a
real daphne process (tests/asgi_with_consumers.py): behind the same origin check, TLS, rate
limit and session as /ws/, and closed (4001) when its session signs out. And the routes that
would take /ws/ refused at start."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.routing import URLRouter
from django.core.exceptions import ImproperlyConfigured
from django.urls import path, re_path
from websockets.exceptions import InvalidStatus

from realtime.routing import urlpatterns_with
from realtime.websocket.project_routes import ClosedOnSignOut
from tests.helpers import (
    DAPHNE,
    close_code,
    create_users,
    daphne_tls_args,
    free_port,
    logged_in,
    receive_json,
    sign_out,
    ws_connect,
)

APP = "tests.asgi_with_consumers:application"
RATE, BURST = 5, 5


async def noop(scope, receive, send) -> None:
    pass


# --- Routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "routes",
    [
        [path("ws/", noop)],
        [re_path(r"^ws/$", noop)],
        [re_path(r"", noop)],  # a catch-all would answer /ws/ too
        [path("", URLRouter([path("ws/", noop)]))],
    ],
    ids=["path", "re_path", "catch-all", "nested"],
)
def test_a_route_that_matches_ws_is_refused(routes):
    with pytest.raises(ImproperlyConfigured, match="/ws/"):
        urlpatterns_with(routes)


def test_project_routes_go_between_ws_and_the_refusal_each_behind_the_sign_out_layer():
    game = path("game/", noop)
    lobby = path("lobby/", URLRouter([path("<slug:room>/", noop)]))
    patterns = urlpatterns_with([game, lobby])
    assert [str(p.pattern) for p in patterns] == ["ws/", "game/", "lobby/", ""]
    assert isinstance(patterns[1].callback, ClosedOnSignOut)
    assert isinstance(patterns[2].callback, URLRouter)
    assert isinstance(patterns[2].callback.routes[0].callback, ClosedOnSignOut)
    assert game.callback is noop  # the project's own route objects are left as they were


# --- A real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(start, dev_certs):
    port = free_port()
    args = [*daphne_tls_args(port, dev_certs)[:-1], APP]
    return start(args, port, REALTIME_WS_RATE=str(RATE), REALTIME_WS_BURST=str(BURST))


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"bob": False})


def url_of(server, path: str = "/whoami/") -> str:
    return f"wss://localhost:{server.port}{path}"


async def ask(socket_, message: dict) -> dict:
    await socket_.send(json.dumps(message))
    return await receive_json(socket_)


def test_the_consumer_serves_anonymous_and_signed_in_users_from_the_session(
    server, client_tls, users
):
    cookie = logged_in(server.port, client_tls, "bob", users).cookie_header()

    async def scenario():
        async with ws_connect(url_of(server), client_tls) as anonymous:
            assert await ask(anonymous, {"n": 1}) == {"user": None, "echo": {"n": 1}}
        headers = {"Cookie": cookie}
        async with ws_connect(url_of(server), client_tls, additional_headers=headers) as bob:
            assert await ask(bob, {"n": 2}) == {"user": "bob", "echo": {"n": 2}}
        # /ws/ is served as before beside it.
        async with ws_connect(url_of(server, "/ws/"), client_tls) as realtime:
            assert (await receive_json(realtime))["type"] == "welcome"

    asyncio.run(scenario())


def test_a_foreign_origin_is_refused_with_403(server, client_tls):
    async def scenario():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url_of(server), client_tls, origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403

    asyncio.run(scenario())


def test_an_unknown_path_is_still_refused_with_403(server, client_tls):
    async def scenario():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url_of(server, "/nothing/"), client_tls):
                pass
        assert info.value.response.status_code == 403

    asyncio.run(scenario())


def test_the_rate_limit_applies_then_a_flood_is_closed_with_1008(server, client_tls):
    async def scenario():
        async with ws_connect(url_of(server), client_tls) as socket_:
            for n in range(BURST + 3):
                await socket_.send(json.dumps({"n": n}))
            replies = [await receive_json(socket_) for _ in range(BURST + 3)]
            assert [r["echo"]["n"] for r in replies if "echo" in r] == list(range(BURST))
            assert {r.get("code") for r in replies if "echo" not in r} == {"rate_limited"}
            for n in range(3 * BURST):
                await socket_.send(json.dumps({"n": n}))
            assert await close_code(socket_) == 1008

    asyncio.run(scenario())


def test_a_sign_out_closes_the_sessions_sockets_with_4001(server, client_tls, users):
    session = logged_in(server.port, client_tls, "bob", users)

    async def scenario():
        headers = {"Cookie": session.cookie_header()}
        async with ws_connect(url_of(server), client_tls, additional_headers=headers) as bob:
            assert (await ask(bob, {"n": 1}))["user"] == "bob"
            await asyncio.to_thread(sign_out, session)
            assert await close_code(bob) == 4001

    asyncio.run(scenario())


def test_with_tls_required_a_plain_socket_is_closed_with_1008(start):
    port = free_port()
    server = start([DAPHNE, "-b", "127.0.0.1", "-p", str(port), APP], port)

    async def scenario():
        url = f"ws://localhost:{server.port}/whoami/"
        async with ws_connect(url) as socket_:
            assert await close_code(socket_) == 1008
            assert socket_.close_reason == "TLS required: connect with wss://"

    asyncio.run(scenario())

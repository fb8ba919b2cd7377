"""How the project should hold its PostgreSQL connections: measured side by side.

    .venv/bin/python -m bench.database [--seconds 3] [--rounds 3]

One realtime-daphne process (the README's production command, pinned to CPU 0) per way of
connecting, on a fresh PostgreSQL database (127.0.0.1:5432, or BENCH_DATABASE_URL's server):

    pool         Django's connection pool (psycopg_pool), each connection checked before use
    persistent   one connection kept per thread for 600 s, Django's health check before reuse
    per-request  a new connection for every request and socket (CONN_MAX_AGE 0)

Load (on CPU 1): 4 processes each loading the home page as a signed-in user over one
keep-alive HTTPS connection (session, user and recent broadcasts read from the database), then
4 processes each opening and closing signed-in WSS sockets (the consumer reads the session, the
user and the latest broadcast id). Rounds alternate the three; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from websockets.asyncio.client import connect

from bench.procs import ROOT, Server, free_port, handle_stop_signals, stop_all
from realtime.server.endpoints import realtime_endpoint
from realtime.tls.devca import ensure_dev_certificate

WAYS = {
    "pool": {"DATABASE_POOL": "1"},
    "persistent": {"DATABASE_POOL": "0", "DATABASE_CONN_MAX_AGE": "600"},
    "per-request": {"DATABASE_POOL": "0", "DATABASE_CONN_MAX_AGE": "0"},
}
CLIENTS = 4
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def server_url(name: str) -> str:
    return SERVER.rsplit("/", 1)[0] + "/" + name


def admin(statement: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as connection:
        connection.execute(statement)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(result.stderr)
    return result.stdout.strip()


SIGNED_IN = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from realtime import broadcast
user = get_user_model().objects.create_user("bench", password="x" * 20)
for n in range(5):
    broadcast.send(f"history {n}")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def page_loads(port: int, cafile: str, cookie: str, seconds: float) -> int:
    context = ssl.create_default_context(cafile=cafile)
    connection = http.client.HTTPSConnection("localhost", port, context=context)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.request("GET", "/", headers={"Cookie": f"sessionid={cookie}"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and b"bench" in body, response.status
        done += 1
    return done


def socket_opens(port: int, cafile: str, cookie: str, seconds: float) -> int:
    async def run() -> int:
        context = ssl.create_default_context(cafile=cafile)
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            async with connect(
                f"wss://localhost:{port}/ws/",
                ssl=context,
                origin=f"https://localhost:{port}",
                additional_headers={"Cookie": f"sessionid={cookie}"},
            ) as socket_:
                welcome = json.loads(await socket_.recv())
                assert welcome["user"] == "bench", welcome
            done += 1
        return done

    return asyncio.run(run())


def rate(work, port: int, cafile: str, cookie: str, seconds: float) -> float:
    with multiprocessing.Pool(CLIENTS) as pool:
        os.sched_setaffinity(0, {1})
        counts = pool.starmap(work, [(port, cafile, cookie, seconds)] * CLIENTS)
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    handle_stop_signals()
    work = Path(tempfile.mkdtemp(prefix="bench-database-"))
    certs = ensure_dev_certificate(work / "certs").paths
    name = f"bench_database_{os.getpid()}"
    admin(f"CREATE DATABASE {name}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))},
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-" + "d" * 40,
        "DJANGO_STATIC_ROOT": str(work / "static"),
        "DATABASE_URL": server_url(name),
        "REALTIME_WS_RATE": "0",
        "REALTIME_WS_MAX_PER_CLIENT": "0",
        "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "0",
    }
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")
        cookie = manage(env, "shell", "--no-imports", "-c", SIGNED_IN).splitlines()[-1]
        figures: dict[str, dict[str, list[float]]] = {w: {"pages": [], "sockets": []} for w in WAYS}
        for round_ in range(options.rounds):
            for way, extra in WAYS.items():
                port = free_port()
                endpoint = realtime_endpoint(port, certs.cert, certs.key)
                server = Server(
                    way,
                    [sys.executable, "-m", "realtime.server", "-e", endpoint,
                     "project.asgi:application"],
                    {**env, **extra},
                    [port],
                    work / f"{way}-{round_}.log",
                    cpus="0",
                ).start()  # fmt: skip
                try:
                    cafile = str(certs.ca_cert)
                    page_loads(port, cafile, cookie, 0.5)  # warm up
                    figures[way]["pages"].append(
                        rate(page_loads, port, cafile, cookie, options.seconds)
                    )
                    figures[way]["sockets"].append(
                        rate(socket_opens, port, cafile, cookie, options.seconds)
                    )
                finally:
                    server.stop()
        print("| Way | Signed-in page loads/s | Signed-in WSS opens/s |")
        print("|---|---|---|")
        for way, measured in figures.items():
            pages = statistics.median(measured["pages"])
            sockets = statistics.median(measured["sockets"])
            print(f"| {way} | {pages:,.0f} | {sockets:,.0f} |")
    finally:
        stop_all()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()

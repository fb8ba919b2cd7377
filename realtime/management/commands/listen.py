"""`manage.py listen TOPIC [--user NAME] [--url URL] [--since EPOCH:OFFSET] [--json]`: print a
topic's messages as they arrive, one line each, through `realtime.client` (docs/client.md).

For operators debugging a live system. It connects to the server like any client and is
authorized like one: with `--user`, it signs in as that user by writing a session for them in
the session store the servers read (this command's database), and the topic's `authorize` runs
for that user as the database has them, on every subscribe, as for a browser. Anyone who can run
this command holds the database and the secret key, so they could already sign in as anyone; it
adds no right and skips no check. Without `--user` it listens anonymously.

The session is marked as this command's and deleted when the command ends: on Ctrl-C, SIGTERM
and SIGHUP (the SSH connection it ran in dropped). A command that cannot clean up (SIGKILL, a
power cut) leaves it, so it expires after --session-ttl seconds (an hour), not a browser's two
weeks: the command renews it every quarter of that while it runs. Its key never travels in
clear: `--user` over ws:// is refused, except to a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import ssl
import sys
import threading
from contextlib import suppress
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_backends,
    get_user_model,
)
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from realtime import client
from realtime.conf import conf
from realtime.tls.devca import DevCertPaths

DEFAULT_PORT = 8443  # serve's and `make run`'s (runserver --tls) port
LISTEN_MARK = "realtime_listen"  # in the session's data: this command's, not a browser's
SESSION_TTL = 3600  # seconds a session it leaves behind stays valid (--session-ttl)
RENEWALS = 4  # times its expiry is pushed back within each --session-ttl while it runs
# What ends it with its session deleted. SIGHUP: the terminal or SSH connection it ran in is gone.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def default_url() -> str:
    """wss://<the first named host of ALLOWED_HOSTS>:8443/ws/ (wss://localhost:8443/ws/ in dev)."""
    named = [h for h in settings.ALLOWED_HOSTS if h and not h.startswith((".", "*"))]
    return f"wss://{named[0] if named else 'localhost'}:{DEFAULT_PORT}/ws/"


def trust(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, plus `--ca`; in DEBUG also the dev CA that `devcert` made, as its
    instructions say ("Python clients"). Verification is never turned off."""
    context = ssl.create_default_context()
    dev_ca = DevCertPaths.in_dir(Path(conf.REALTIME_CERT_DIR)).ca_cert
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    elif settings.DEBUG and dev_ca.exists():
        context.load_verify_locations(cafile=str(dev_ca))
    return context


def in_clear_off_this_host(url: str) -> bool:
    """True when `url` is ws:// (or http://) to a host that is not a loopback address: the
    session cookie would cross a network unencrypted."""
    parts = urlsplit(client.websocket_url(url))
    if parts.scheme != "ws":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere


def session_for(username: str, ttl: int) -> tuple[Any, str]:
    """A new session signed in as `username` (store, key), as django.contrib.auth.login
    writes one, without the signal and last_login of a real sign-in; valid `ttl` seconds."""
    user = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: username})
    user = user.first()
    if user is None:
        raise CommandError(f"No user {username!r}.")
    if not user.is_active:
        raise CommandError(f"User {username!r} is inactive: the server would not sign it in.")
    backend = next(
        (b for b in get_backends() if b.get_user(user.pk) is not None), None
    )  # what the server's get_user will load it with
    if backend is None:
        raise CommandError(f"No authentication backend loads user {username!r}.")
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = user._meta.pk.value_to_string(user)
    store[BACKEND_SESSION_KEY] = f"{type(backend).__module__}.{type(backend).__qualname__}"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store[LISTEN_MARK] = True
    store.set_expiry(ttl)
    store.create()
    return store, store.session_key


def renew(store: Any, ttl: int) -> None:
    """Push the session's end `ttl` seconds from now (in a thread: it writes the store)."""
    try:
        store.set_expiry(ttl)
        store.save()
    finally:
        connections.close_all()  # this thread's: the next renewal may run in another


class Stopped(Exception):  # noqa: N818 - not an error: a signal said stop
    """SIGTERM or SIGHUP before the event loop took them over."""


def stopped(signum: int, frame: Any) -> None:
    raise Stopped


def handle_signals(handler: Any) -> dict[int, Any]:
    """Set `handler` for every stop signal (only the main thread may); the ones it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


class Command(BaseCommand):
    help = (
        "Print a topic's messages as they arrive, one line each (offset, event, from, data), "
        "reconnecting and resuming when the server restarts. Ctrl-C stops it."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("topic", help="The topic, as a client subscribes to it.")
        parser.add_argument(
            "--url",
            help="The server (wss://HOST:PORT/ws/ or https://HOST:PORT; default: "
            "wss://<first ALLOWED_HOSTS name>:8443/ws/).",
        )
        parser.add_argument("--user", help="Listen as this user (default: anonymous).")
        parser.add_argument("--since", metavar="EPOCH:OFFSET", help="Start after this position.")
        parser.add_argument("--ca", help="A CA file to trust besides the system's.")
        parser.add_argument("--origin", help="The Origin header (default: the URL's own).")
        parser.add_argument("--json", action="store_true", help="Each message as JSON.")
        parser.add_argument(
            "--session-ttl",
            type=int,
            default=SESSION_TTL,
            metavar="SECONDS",
            help=f"With --user: how long its session stays valid if this command is killed "
            f"before it can delete it (renewed while it runs; default {SESSION_TTL}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"] or default_url()
        try:
            since = client.parse_position(options["since"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        ttl = options["session_ttl"]
        if ttl < 1:
            raise CommandError("--session-ttl must be at least 1 second.")
        try:
            cleartext = in_clear_off_this_host(url)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["user"] and cleartext:
            raise CommandError(
                f"--user over ws:// to {urlsplit(url).hostname} would send the session in clear: "
                "use wss:// (or ws:// to a loopback address)."
            )
        # From here on a stop signal unwinds through the `finally` that deletes the session
        # (the event loop takes them over while it runs), and none interrupts the deleting.
        previous = handle_signals(stopped)
        store = None
        try:
            store, key = session_for(options["user"], ttl) if options["user"] else (None, None)
            asyncio.run(self.listen(url, store, key, since, options))
        except (KeyboardInterrupt, Stopped):
            pass  # the operator is done, or their connection is gone
        except client.RealtimeError as exc:
            raise CommandError(str(exc)) from None
        finally:
            handle_signals(signal.SIG_IGN)
            try:
                if store is not None:
                    store.delete()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    async def listen(
        self, url: str, store: Any, key: str | None, since: Any, options: dict
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        taken = []
        for signum in STOP_SIGNALS:
            with suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
                taken.append(signum)
        try:
            await self.run(url, store, key, since, options, stop)
        finally:
            # Given back now: closing the loop would leave SIGTERM and SIGHUP at their default,
            # which ends the process before handle() deletes the session.
            for signum in taken:
                loop.remove_signal_handler(signum)
                signal.signal(signum, stopped)

    async def run(
        self, url: str, store: Any, key: str | None, since: Any, options: dict, stop: Any
    ) -> None:
        renewing = None
        if store is not None:
            renewing = asyncio.create_task(self.keep_valid(store, options["session_ttl"]))
        connection = client.connect(
            url,
            ssl=trust(options["ca"]) if url.startswith(("wss:", "https:")) else None,
            origin=options["origin"],
            session=key,
            session_cookie=settings.SESSION_COOKIE_NAME,
            on_state=self.note,
        )
        async with connection as rt:
            subscription = await rt.subscribe(options["topic"], since)
            self.note("subscribed", {"topic": options["topic"], "at": subscription.position()})
            printing = asyncio.create_task(self.print_all(subscription, options["json"]))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({printing, stopping}, return_when="FIRST_COMPLETED")
            for task in (printing, stopping, renewing):
                if task is not None:
                    task.cancel()
            if printing in done and not printing.cancelled():
                printing.result()  # the subscription ended: its reason

    async def keep_valid(self, store: Any, ttl: int) -> None:
        """Renew the session RENEWALS times per `ttl` while the command runs; a failed renewal
        is said and tried again at the next (the session ends at its last end if none works)."""
        while True:
            await asyncio.sleep(ttl / RENEWALS)
            try:
                await asyncio.to_thread(renew, store, ttl)
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while
                self.note("session", {"reason": f"could not renew the session: {exc}"})

    async def print_all(self, subscription: client.Subscription, as_json: bool) -> None:
        async for message in subscription:
            self.stdout.write(json.dumps(message) if as_json else line(message))
            self.stdout.flush()

    def note(self, state: str, info: dict[str, Any]) -> None:
        """What happens to the connection, on stderr (stdout stays the messages)."""
        if state == "open":
            welcome = info["welcome"]
            who = welcome.get("user") or "anonymous"
            text = f"connected to worker {welcome.get('worker')} as {who}"
        elif state == "closed":
            text = (
                f"connection lost ({info.get('code')} {info.get('reason') or ''}".rstrip()
                + f"): reconnecting in {info['reconnect_in']:.1f} s"
            )
        elif state == "subscribed":
            at = info["at"]
            text = f"listening to {info['topic']}" + (f" after {at[0]}:{at[1]}" if at else "")
        else:
            text = f"{state}: {info.get('reason') or ''}".rstrip(": ")
        sys.stderr.write(f"listen: {text}\n")
        sys.stderr.flush()


def line(message: dict[str, Any]) -> str:
    """offset, event, from, data: `7 status alice {"status": "shipped"}`; `-` for none, `~`
    for an ephemeral message's offset; `resume_failed`: what was missed is gone."""
    kind = message.get("type")
    if kind != "message":
        return f"# {kind} {json.dumps({k: v for k, v in message.items() if k != 'type'})}"
    offset = message.get("offset")
    sender = message.get("from")
    return " ".join(
        [
            "~" if offset is None else str(offset),
            message.get("event") or "-",
            sender.get("username", "?") if isinstance(sender, dict) else "-",
            json.dumps(message.get("data"), ensure_ascii=False),
        ]
    )

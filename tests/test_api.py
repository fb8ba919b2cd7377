"""The HTTP publish API (realtime/api/publish.py) and its tokens (realtime/api/tokens.py):
in-process for each answer, then on real servers: schemathesis against /api/openapi.json over
TLS, and curl through TLS publishing a broadcast that sockets on both workers receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from realtime.api import tokens
from realtime.models import ApiToken, Broadcast, TopicMessage
from realtime.web import counters
from tests.helpers import (
    PYTHON,
    ROOT,
    create_user,
    free_port,
    open_on_both_workers,
    receive_json,
)

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"


@pytest.fixture(autouse=True)
def _fresh_rate_counters():
    """The in-memory layer keeps the rate counters in this process: each test starts at 0."""
    counters._local.counts.clear()


def ops():
    """The superuser tokens act for (a token carries only its creator's rights)."""
    return get_user_model().objects.get_or_create(
        username="ops", defaults={"is_staff": True, "is_superuser": True}
    )[0]


def token(*scopes: str, name: str = "svc") -> str:
    return tokens.create(name, list(scopes) or ["broadcasts"], created_by=ops())[1]


def post(client, body, secret: str | None = None, content_type: str = "application/json"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/api/publish", data, content_type=content_type, secure=True, **headers)


# --- Tokens ------------------------------------------------------------------------------------


def test_a_token_is_printed_once_stored_hashed_listed_by_prefix_and_revoked():
    out, err, user = StringIO(), StringIO(), ops().username
    call_command(
        "apitoken", "create", "deployer", "--user", user, "--scope", "broadcasts",
        stdout=out, stderr=err,
    )  # fmt: skip
    secret = out.getvalue().strip()
    assert re.fullmatch(r"rtk_[A-Za-z0-9_-]{43}", secret) and "shown only now" in err.getvalue()
    stored = ApiToken.objects.get(name="deployer")
    row = json.dumps(list(ApiToken.objects.values().get(pk=stored.pk).values()), default=str)
    assert secret not in row and stored.prefix == secret[:12]
    listed = StringIO()
    call_command("apitoken", "list", stdout=listed)
    assert "deployer\trtk_" in listed.getvalue() and secret not in listed.getvalue()
    assert "\tfor ops\t" in listed.getvalue()
    call_command("apitoken", "revoke", "deployer", stdout=StringIO())
    assert tokens.authenticate(f"Bearer {secret}") is None
    with pytest.raises(CommandError, match="No active token"):
        call_command("apitoken", "revoke", "deployer")
    call_command(
        "apitoken", "create", "deployer", "--user", user, stdout=StringIO(), stderr=StringIO()
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["bad name!", "--user", "ops"], "name"),
        (["svc", "--user", "ops", "--scope", "everything"], "is not a scope"),
        (["svc", "--user", "ops", "--scope", "topic:a/b"], "is not a scope"),
        (["svc", "--user", "ops", "--scope", "topic:realtime.*"], "server's own topics"),
        (["svc", "--user", "nobody"], "No user is named 'nobody'"),
        (["svc"], "needs --user USERNAME"),
        ([], "needs the token's NAME"),
    ],
)
def test_a_bad_token_is_refused_with_the_reason(args, says):
    ops()
    with pytest.raises(CommandError, match=says):
        call_command("apitoken", "create", *args, stdout=StringIO(), stderr=StringIO())


def test_two_active_tokens_cannot_share_a_name():
    token(name="twice")
    with pytest.raises(ValueError, match="already named"):
        token(name="twice")


# --- Publishing --------------------------------------------------------------------------------


def test_a_broadcast_is_accepted_with_its_id_and_stored(client):
    secret = token("broadcasts")
    response = post(client, {"message": "From Go", "level": "warning"}, secret)
    assert response.status_code == 202
    sent = Broadcast.objects.get(pk=response.json()["id"])
    assert response.json()["kind"] == "broadcast" and sent.message == "From Go"
    assert sent.level == "warning" and sent.audience == "everyone"
    assert sent.published_at is not None  # published at the commit


def test_a_topic_message_needs_a_scope_that_matches_the_topic(client):
    secret = token("topic:orders.*")
    response = post(client, {"topic": "orders.42", "event": "status", "data": {"s": 1}}, secret)
    assert response.status_code == 202 and response.json()["kind"] == "topic"
    assert TopicMessage.objects.get(pk=response.json()["id"]).data == {"s": 1}
    assert post(client, {"topic": "news.x", "data": 1}, secret).status_code == 403
    assert post(client, {"message": "not allowed"}, secret).status_code == 403
    assert post(client, {"topic": "orders.x", "data": 1}, secret).status_code == 400  # no pattern


@pytest.mark.parametrize("header", [None, "Bearer rtk_wrong", "Basic abc", "Bearer "])
def test_no_valid_token_is_401_with_the_scheme(client, header):
    token()
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(
        "/api/publish", '{"message": "x"}', content_type="application/json", secure=True, **extra
    )
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response["WWW-Authenticate"] == 'Bearer realm="realtime"'
    assert not Broadcast.objects.exists()


@pytest.mark.parametrize(
    "body, content_type, status, error",
    [
        ("not json", "application/json", 400, "invalid_json"),
        ('{"message": NaN}', "application/json", 400, "invalid_json"),
        ("[1]", "application/json", 400, "invalid_body"),
        ('{"message": "x", "extra": 1}', "application/json", 400, "invalid_body"),
        ('{"message": 5}', "application/json", 400, "invalid_body"),
        ('{"message": "' + "x" * 2001 + '"}', "application/json", 400, "invalid_broadcast"),
        ('{"message": "a\\u0000b"}', "application/json", 400, "invalid_broadcast"),
        ('{"message": "\\ud800"}', "application/json", 400, "invalid_broadcast"),
        ('{"message": "x", "level": "loud"}', "application/json", 400, "invalid_broadcast"),
        ('{"topic": "news.a", "data": "\\u0000"}', "application/json", 400, "invalid_message"),
        ('{"topic": "news.a", "data": ["\\udc00"]}', "application/json", 400, "invalid_message"),
        ('{"topic": "news.a", "event": "e\\u0000", "data": 1}', "application/json", 400,
         "invalid_message"),
        ('{"topic": "news.a"}', "application/json", 400, "invalid_body"),
        ('{"message": "x"}', "text/plain", 415, "unsupported_media_type"),
    ],
)  # fmt: skip
def test_what_cannot_be_sent_is_refused_with_a_reason(client, body, content_type, status, error):
    secret = token("broadcasts", "topic:*")
    response = post(client, body, secret, content_type)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert response.json()["detail"]
    assert not Broadcast.objects.exists() and not TopicMessage.objects.exists()


def test_deep_or_large_bodies_get_an_answer_not_a_500(client, settings):
    secret = token("topic:*")
    deep = '{"topic": "news.a", "data": ' + "[" * 5000 + "]" * 5000 + "}"
    assert post(client, deep, secret).json()["error"] == "invalid_json"  # past Python's stack
    nested = {"topic": "news.a", "data": 1}
    for _ in range(65):
        nested["data"] = [nested["data"]]
    answer = post(client, nested, secret)
    assert answer.status_code == 400 and "64 levels" in answer.json()["detail"]
    settings.REALTIME_TOPIC_MAX_DATA = 10
    answer = post(client, {"topic": "news.a", "data": "x" * 200}, secret)
    assert answer.status_code == 400 and "REALTIME_TOPIC_MAX_DATA" in answer.json()["detail"]
    answer = post(client, {"topic": "news.a", "data": "x" * 5000}, secret)  # past 12x + 4 KiB
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    assert not TopicMessage.objects.exists()


def test_a_token_revoked_between_two_requests_is_refused_at_once(client):
    secret = token(name="short-lived")
    assert post(client, {"message": "one"}, secret).status_code == 202
    tokens.revoke("short-lived")
    assert post(client, {"message": "two"}, secret).status_code == 401


def test_only_post_is_allowed(client):
    response = client.get("/api/publish", secure=True)
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_a_token_past_its_rate_is_429_until_the_window_ends(client, settings, counters_clock):
    settings.REALTIME_API_RATE_LIMIT, settings.REALTIME_API_RATE_WINDOW = 3, 2
    secret = token()
    answers = [post(client, {"message": f"n{n}"}, secret).status_code for n in range(4)]
    counters_clock.advance(1.9)  # still in the window
    refused = post(client, {"message": "late"}, secret)
    assert answers == [202, 202, 202, 429] and refused.status_code == 429
    assert refused["Retry-After"] == "2"
    counters_clock.advance(0.2)  # past the window
    assert post(client, {"message": "again"}, secret).status_code == 202


def test_wrong_tokens_are_limited_per_address_and_never_hold_back_a_valid_one(
    client, settings, counters_clock
):
    settings.REALTIME_API_RATE_LIMIT, settings.REALTIME_API_RATE_WINDOW = 3, 2
    secret = token()
    wrong = [post(client, {"message": "x"}, "rtk_guess").status_code for _ in range(4)]
    assert wrong == [401, 401, 401, 429]
    assert post(client, {"message": "x"}, secret).status_code == 202  # the same address
    counters_clock.advance(2.1)  # past the window
    assert post(client, {"message": "x"}, "rtk_guess").status_code == 401


def test_the_openapi_document_shows_the_registered_topics_to_a_token_only(client):
    anonymous = client.get("/api/openapi.json", secure=True)
    operation = anonymous.json()["paths"]["/api/publish"]["post"]
    assert set(operation["responses"]) >= {"202", "400", "401", "403", "413", "415", "429"}
    assert "orders" not in anonymous.content.decode()
    secret = token("topic:news.*")
    document = client.get(
        "/api/openapi.json", secure=True, HTTP_AUTHORIZATION=f"Bearer {secret}"
    ).json()
    topic = document["components"]["schemas"]["TopicMessage"]["properties"]["topic"]
    assert "orders\\.([0-9]+)" in topic["allOf"][1]["pattern"]


# --- The admin -----------------------------------------------------------------------------


def test_the_admin_creates_a_token_shows_it_once_and_revokes_it(admin_client):
    response = admin_client.post(
        "/admin/realtime/apitoken/add/",
        {"name": "from-admin", "scopes_text": "broadcasts\ntopic:orders.*"},
        secure=True,
    )
    assert response.status_code == 200
    secret = re.search(r"rtk_[A-Za-z0-9_-]{43}", response.content.decode()).group(0)
    stored = ApiToken.objects.get(name="from-admin")
    assert stored.scopes == ["broadcasts", "topic:orders.*"]
    assert tokens.authenticate(f"Bearer {secret}") == stored
    listing = admin_client.get("/admin/realtime/apitoken/", secure=True).content.decode()
    assert "from-admin" in listing and secret not in listing
    admin_client.post(
        "/admin/realtime/apitoken/",
        {"action": "revoke_tokens", "_selected_action": [stored.pk]},
        secure=True,
    )
    assert tokens.authenticate(f"Bearer {secret}") is None


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", password="pw")
    client.force_login(user, "django.contrib.auth.backends.ModelBackend")
    return client


# --- Real servers ---------------------------------------------------------------------------


def create_token_in(server_env: dict, name: str, *scopes: str) -> str:
    create_user(server_env, "ops", staff=True)  # a superuser: the token acts for them
    args = [PYTHON, "manage.py", "apitoken", "create", name, "--user", "ops"]
    for scope in scopes:
        args += ["--scope", scope]
    result = subprocess.run(args, cwd=ROOT, env=server_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def served(start, redis_server, dev_certs):
    port = free_port()
    certificate = ["--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]
    args = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate]
    return start(args, port, REDIS_URL=redis_server.url, REALTIME_API_RATE_LIMIT="0")


def test_schemathesis_finds_no_failure(served, server_env, dev_certs, client_tls, tmp_path):
    secret = create_token_in(server_env, "schemathesis", "broadcasts", "topic:*")
    base = f"https://localhost:{served.port}"
    document = tmp_path / "openapi.json"  # as a token sees it: with the registered topics
    request = urllib.request.Request(
        f"{base}/api/openapi.json", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, context=client_tls, timeout=10) as response:
        document.write_bytes(response.read())
    result = subprocess.run(
        [
            str(SCHEMATHESIS), "run", str(document), "--url", base,
            "--checks", "all", "--header", f"Authorization: Bearer {secret}",
            "--tls-verify", str(dev_certs.ca_cert), "--max-examples", "60", "--seed", "17",
            "--generation-allow-x00", "false", "--generation-codec", "utf-8",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(result.stdout[-3000:])  # shown with -s: what was run and checked


def test_curl_through_tls_reaches_sockets_on_both_workers(
    served, server_env, dev_certs, client_tls
):
    secret = create_token_in(server_env, "curl", "broadcasts")
    url = f"wss://localhost:{served.port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_on_both_workers(url, client_tls, stack, cookie="")
            curl = await asyncio.create_subprocess_exec(
                "curl", "--silent", "--show-error", "--cacert", str(dev_certs.ca_cert),
                "-H", f"Authorization: Bearer {secret}", "-H", "Content-Type: application/json",
                "-d", '{"message": "from curl", "level": "success"}',
                "-w", "\n%{http_code}", f"https://localhost:{served.port}/api/publish",
                stdout=subprocess.PIPE,
            )  # fmt: skip
            output, _ = await curl.communicate()
            got = {}
            for socket_, worker in sockets:
                message = await receive_json(socket_)
                while message["type"] != "broadcast":
                    message = await receive_json(socket_)
                got[worker] = message["message"]
            return output.decode(), got

    output, got = asyncio.run(scenario())
    body, status = output.rsplit("\n", 1)
    assert status == "202" and json.loads(body)["kind"] == "broadcast", output
    assert len(got) == 2 and set(got.values()) == {"from curl"}


def test_the_rate_is_counted_in_redis_for_all_workers(start, redis_server, dev_certs, client_tls):
    """Six requests over new connections (the kernel spreads them over both workers), a limit
    of three: exactly three are accepted, whichever worker answered."""
    port = free_port()
    certificate = ["--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]
    args = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate]
    server = start(
        args,
        port,
        REDIS_URL=redis_server.url,
        REALTIME_API_RATE_LIMIT="3",
        REALTIME_API_RATE_WINDOW="60",
    )
    secret = create_token_in(server.env, "limited", "broadcasts")
    statuses = []
    for n in range(6):
        request = urllib.request.Request(
            f"https://localhost:{port}/api/publish",
            data=json.dumps({"message": f"n{n}"}).encode(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=client_tls, timeout=10) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as refused:
            statuses.append(refused.code)
    assert statuses == [202, 202, 202, 429, 429, 429]


def test_last_use_is_written_at_most_once_a_minute(client):
    """tokens.USED_EVERY: a second call within the minute writes nothing; past it, it does."""
    secret = token(name="busy")
    assert post(client, {"message": "one"}, secret).status_code == 202
    first = ApiToken.objects.get(name="busy").last_used_at
    assert first is not None
    assert post(client, {"message": "two"}, secret).status_code == 202
    assert ApiToken.objects.get(name="busy").last_used_at == first  # within the minute
    past = first - tokens.USED_EVERY - timedelta(seconds=1)
    ApiToken.objects.filter(name="busy").update(last_used_at=past)  # as if a minute went by
    assert post(client, {"message": "three"}, secret).status_code == 202
    assert ApiToken.objects.get(name="busy").last_used_at > first

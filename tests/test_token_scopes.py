"""A publish API token carries only rights its creator holds (realtime/api/tokens.py), at its
creation and at every use, and never sends to the server's own topics (realtime.*).

The attack this stops: a staff user allowed to make API tokens but not to send broadcasts made
a `broadcasts` token and broadcast with it, and a `topic:*` token wrote into realtime.stats
(the admin's live view) and realtime.online. In process first, then against a real daphne over
TLS: the admin's form, and publishing after the creator lost the right."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from realtime.api import tokens
from realtime.models import ApiToken, Broadcast, TopicMessage
from realtime.web import counters
from tests.helpers import PYTHON, ROOT, BrowserSession, create_user, demote, run_in_shell

pytestmark = pytest.mark.django_db(transaction=True)

INTERNAL = ["realtime.stats", "realtime.online"]


@pytest.fixture(autouse=True)
def _fresh_rate_counters():
    counters._local.counts.clear()


def make_user(name: str, *perms: str, staff: bool = True, superuser: bool = False):
    user = get_user_model().objects.create_user(
        name, password=f"pw-{name}", is_staff=staff, is_superuser=superuser
    )
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    return user


def publish(client, secret: str, body: dict):
    return client.post(
        "/api/publish",
        json.dumps(body),
        content_type="application/json",
        secure=True,
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


# --- Creating a token ---------------------------------------------------------------------------


def test_a_token_is_refused_scopes_its_creator_does_not_hold():
    tina = make_user("tina", "add_apitoken", "view_apitoken")
    for scopes, right in [(["broadcasts"], "add_broadcast"), (["topic:orders.*"], "topicmessage")]:
        with pytest.raises(ValueError, match=right):
            tokens.create("svc", scopes, created_by=tina)
    with pytest.raises(ValueError, match="name its creator"):
        tokens.create("svc", ["broadcasts"], created_by=None)
    boss = make_user("boss", superuser=True, staff=True)
    boss.is_active = False
    with pytest.raises(ValueError, match="may not give broadcasts"):
        tokens.create("svc", ["broadcasts"], created_by=boss)
    assert not ApiToken.objects.exists()


def test_the_command_gives_a_token_only_the_rights_of_its_user():
    make_user("tina", "add_apitoken", "add_topicmessage")
    quiet = {"stdout": StringIO(), "stderr": StringIO()}
    with pytest.raises(CommandError, match="realtime.add_broadcast"):
        call_command("apitoken", "create", "svc", "--user", "tina", **quiet)
    call_command("apitoken", "create", "svc", "--user", "tina", "--scope", "topic:news.*", **quiet)
    assert ApiToken.objects.get(name="svc").created_by.username == "tina"


def test_the_admin_refuses_a_staff_user_scopes_beyond_their_rights(client):
    tina = make_user("tina", "add_apitoken", "view_apitoken")
    client.force_login(tina, "django.contrib.auth.backends.ModelBackend")
    for scopes, right in [("broadcasts", "add_broadcast"), ("topic:news.*", "add_topicmessage")]:
        response = client.post(
            "/admin/realtime/apitoken/add/", {"name": "mine", "scopes_text": scopes}, secure=True
        )
        html = response.content.decode()
        assert response.status_code == 200 and "errorlist" in html and right in html
    assert not ApiToken.objects.exists()
    tina.user_permissions.add(Permission.objects.get(codename="add_topicmessage"))
    response = client.post(
        "/admin/realtime/apitoken/add/",
        {"name": "mine", "scopes_text": "topic:news.*"},
        secure=True,
    )
    assert re.search(r"rtk_[A-Za-z0-9_-]{43}", response.content.decode())
    assert ApiToken.objects.get(name="mine").created_by == tina


# --- Using a token ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", INTERNAL)
def test_no_token_sends_to_the_servers_own_topics(client, topic):
    boss = make_user("boss", superuser=True)
    secret = tokens.create("all", ["broadcasts", "topic:*"], created_by=boss)[1]
    response = publish(client, secret, {"topic": topic, "data": {"fake": 1}})
    assert response.status_code == 403 and "server's own" in response.json()["detail"]
    assert not TopicMessage.objects.filter(topic=topic).exists()
    assert publish(client, secret, {"topic": "news.a", "data": 1}).status_code == 202


def test_the_openapi_document_leaves_the_servers_own_topics_out(client):
    boss = make_user("boss", superuser=True)
    secret = tokens.create("all", ["topic:*"], created_by=boss)[1]
    document = client.get(
        "/api/openapi.json", secure=True, HTTP_AUTHORIZATION=f"Bearer {secret}"
    ).json()
    pattern = document["components"]["schemas"]["TopicMessage"]["properties"]["topic"]
    assert "news" in json.dumps(pattern) and "realtime" not in json.dumps(pattern)


def test_a_token_stops_where_its_creator_lost_the_right(client):
    tina = make_user("tina", "add_broadcast", "add_topicmessage")
    secret = tokens.create("svc", ["broadcasts", "topic:news.*"], created_by=tina)[1]
    assert publish(client, secret, {"message": "one"}).status_code == 202
    assert tina.has_perm("realtime.add_broadcast")  # fills this object's permission cache
    tina.user_permissions.remove(Permission.objects.get(codename="add_broadcast"))
    refused = publish(client, secret, {"message": "two"})
    assert refused.status_code == 403 and "realtime.add_broadcast" in refused.json()["detail"]
    assert publish(client, secret, {"topic": "news.a", "data": 1}).status_code == 202
    assert list(Broadcast.objects.values_list("message", flat=True)) == ["one"]


@pytest.mark.parametrize("gone", ["deactivated", "deleted"])
def test_a_token_stops_when_its_creator_is_gone(client, gone):
    boss = make_user("boss", superuser=True)
    secret = tokens.create("svc", ["broadcasts", "topic:*"], created_by=boss)[1]
    if gone == "deleted":
        boss.delete()
    else:
        get_user_model().objects.filter(pk=boss.pk).update(is_active=False)
    assert publish(client, secret, {"message": "x"}).status_code == 403
    assert publish(client, secret, {"topic": "news.a", "data": 1}).status_code == 403
    assert not Broadcast.objects.exists() and not TopicMessage.objects.exists()


# --- Against a real server ----------------------------------------------------------------------


def post_json(port: int, tls, secret: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"https://localhost:{port}/api/publish",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=tls, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


def command_token(env: dict, name: str, user: str, *scopes: str) -> str:
    args = [PYTHON, "manage.py", "apitoken", "create", name, "--user", user]
    for scope in scopes:
        args += ["--scope", scope]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_real_server_refuses_internal_topics_and_a_demoted_creators_token(daphne_tls, client_tls):
    env, port = daphne_tls.env, daphne_tls.port
    create_user(env, "rex", staff=True)  # a superuser
    secret = command_token(env, "rex-all", "rex", "broadcasts", "topic:*")
    for topic in INTERNAL:
        status, body = post_json(port, client_tls, secret, {"topic": topic, "data": {"n": 1}})
        assert status == 403 and "server's own" in body["detail"], body
    assert post_json(port, client_tls, secret, {"message": "before"})[0] == 202
    demote(env, "", "rex")  # no longer superuser: no add_broadcast, no add_topicmessage
    for body in ({"message": "after"}, {"topic": "news.a", "data": 1}):
        status, answer = post_json(port, client_tls, secret, body)
        assert status == 403 and "no longer holds" in answer["detail"], answer


def test_a_real_servers_admin_refuses_a_broadcasts_token_to_staff_without_the_right(
    daphne_tls, client_tls
):
    env, port = daphne_tls.env, daphne_tls.port
    password = create_user(env, "tom", staff=False)
    run_in_shell(
        env,
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.models import Permission\n"
        "tom = get_user_model().objects.get(username='tom')\n"
        "tom.is_staff = True\n"
        "tom.save()\n"
        "tom.user_permissions.set(Permission.objects.filter(codename__in=\n"
        "    ['add_apitoken', 'view_apitoken']))\n",
    )
    session = BrowserSession(f"https://localhost:{port}", client_tls)
    session.login("tom", password)
    status, html = session.post_form(
        "/admin/realtime/apitoken/add/", {"name": "tom-b", "scopes_text": "broadcasts"}
    )
    assert status == 200 and "errorlist" in html and "realtime.add_broadcast" in html
    assert not re.search(r"rtk_[A-Za-z0-9_-]{43}", html)
    made = (
        "from realtime.models import ApiToken\nprint(ApiToken.objects.filter(name='tom-b').count())"
    )
    assert run_in_shell(env, made).strip() == "0"

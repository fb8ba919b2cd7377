"""Live HTML in process (realtime.fragments, the in-memory layer): fragments rendered once with
autoescaping and delivered as topic messages, signed stream names checked at each subscribe
and past their age, model broadcasting after commit, and the `{% realtime_stream %}` tag.
The page's side (realtime/static/realtime/live_html.mjs) is tested in Chromium."""

from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.template import Context, Template
from django.test import RequestFactory
from django.utils.html import format_html

from realtime import fragments, topics
from realtime.messaging import html_fragments, streams
from realtime.messaging import topic_rules as registry
from realtime.messaging.signed_streams import Verdict, verify
from realtime.models import TopicMessage
from tests.helpers import ROOT
from tests.test_authorization import opened, signed_in
from tests.test_topics import ask, received

pytestmark = pytest.mark.django_db(transaction=True)

BOARD = "fragments.board"  # no pattern matches it: only a signed name lets a page in


@pytest.fixture(autouse=True)
def _clean():
    saved = dict(registry.registrations)
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)
    async_to_sync(get_channel_layer().flush)()


def user(name: str):
    return get_user_model().objects.get(username=name)


def use_templates(settings, *directories) -> None:
    """Look for templates in `directories` before the apps' (a copy: the settings fixture
    restores only what is assigned)."""
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": list(directories)}]


async def subscribe_signed(socket_, topic: str, token, since=None) -> dict:
    message = {"type": "subscribe", "topic": topic, "signed": token}
    if since is not None:
        message["since"] = since
    return await ask(socket_, message)


# --- Rendering ---------------------------------------------------------------------------------


def test_a_template_is_rendered_with_autoescaping_so_markup_in_data_arrives_as_text(settings):
    use_templates(settings, ROOT / "tests/templates")
    evil = Group(pk=7, name='<script>alert(1)</script><img src=x onerror="alert(2)">')
    data = fragments.render(
        "append", "list", template="tests/group_card.html", context={"group": evil, "dom_id": "g"}
    )
    assert data == {
        "action": "append",
        "target": "list",
        "html": '<li id="g">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x '
        "onerror=&quot;alert(2)&quot;&gt;</li>\n",
    }


def test_html_is_sent_as_given_only_when_marked_safe():
    assert fragments.render("update", "n", html="<b>3</b>")["html"] == "&lt;b&gt;3&lt;/b&gt;"
    safe = format_html("<b>{}</b>", "<i>")
    assert fragments.render("update", "n", html=safe)["html"] == "<b>&lt;i&gt;</b>"


@pytest.mark.parametrize(
    ("action", "target", "kwargs", "says"),
    [
        ("explode", "x", {"html": "a"}, "Unknown action 'explode'"),
        ("append", "", {"html": "a"}, "target must be an element id"),
        ("append", "a b", {"html": "a"}, "target must be an element id"),
        ("append", "x" * 201, {"html": "a"}, "target must be an element id"),
        ("append", "x", {}, '"append" needs a template or html'),
        ("append", "x", {"html": "a", "template": "t.html"}, '"append" needs a template or html'),
        ("remove", "x", {"html": "a"}, '"remove" takes no template and no html'),
    ],
)
def test_a_wrong_fragment_is_refused_with_a_clear_message(action, target, kwargs, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        fragments.render(action, target, **kwargs)


@pytest.mark.parametrize("topic", ["", "has space", "$broadcasts", "user", "a/b", "x" * 201])
def test_send_refuses_a_name_that_is_not_a_topic(topic):
    with pytest.raises(ValueError, match="is not a topic name"):
        fragments.send(topic, "remove", "x")


def test_a_fragment_larger_than_a_topic_message_may_be_is_refused(settings):
    settings.REALTIME_TOPIC_MAX_DATA = 1000
    with pytest.raises(ValueError, match="REALTIME_TOPIC_MAX_DATA"):
        fragments.send(BOARD, "append", "list", html=format_html("{}", "x" * 1000))
    assert not TopicMessage.objects.filter(topic=BOARD).exists()


# --- Signed stream names ------------------------------------------------------------------------


def test_a_signed_name_lets_its_user_follow_an_unregistered_topic_and_get_each_fragment_once():
    alice = signed_in("alice")
    token = fragments.signed_stream(BOARD, user("alice"))

    def send_in_transactions():
        with transaction.atomic():
            fragments.send(BOARD, "append", "list", html=format_html("<li>{}</li>", "no"))
            transaction.set_rollback(True)
        fragments.send(BOARD, "append", "list", html=format_html("<li>{}</li>", "yes"))
        fragments.send(BOARD, "remove", "item-3")

    async def scenario():
        socket_ = await opened(alice)
        unsigned = await ask(socket_, {"type": "subscribe", "topic": BOARD})
        subscribed = await subscribe_signed(socket_, BOARD, token)
        await sync_to_async(send_in_transactions)()
        messages = await received(socket_, 2)
        nothing_more = await socket_.receive_nothing()
        await socket_.disconnect()
        return unsigned, subscribed, messages, nothing_more

    unsigned, subscribed, messages, nothing_more = asyncio.run(scenario())
    assert unsigned["code"] == "forbidden"
    assert subscribed["type"] == "subscribed" and subscribed["topic"] == BOARD
    assert messages == [
        {
            "type": "message",
            "topic": BOARD,
            "event": "html",
            "data": {"action": "append", "target": "list", "html": "<li>yes</li>"},
            "offset": 1,
        },
        {
            "type": "message",
            "topic": BOARD,
            "event": "html",
            "data": {"action": "remove", "target": "item-3"},
            "offset": 2,
        },
    ]
    assert nothing_more


EXPIRED = {
    "type": "error",
    "code": "stream_expired",
    "topic": BOARD,
    "detail": "The page's signed stream name no longer holds (too old, or rendered for another "
    "user or other rights): load the page again.",
}
FORBIDDEN = {
    "type": "error",
    "code": "forbidden",
    "topic": BOARD,
    "detail": "This socket may not subscribe to that topic.",
}


def test_a_signed_name_for_another_topic_or_tampered_is_forbidden_for_another_user_expired():
    signed_in("bob")
    alice = signed_in("alice")
    for_bob = fragments.signed_stream(BOARD, user("bob"))
    for_anyone = fragments.signed_stream(BOARD, None)
    for_other_topic = fragments.signed_stream("fragments.other", user("alice"))
    own = fragments.signed_stream(BOARD, user("alice"))
    tampered = own[:-2] + ("AA" if not own.endswith("AA") else "BB")

    async def scenario():
        socket_ = await opened(alice)
        answers = [
            await subscribe_signed(socket_, BOARD, token)
            for token in (for_other_topic, tampered, "nonsense", for_bob, for_anyone)
        ]
        invalid = [await subscribe_signed(socket_, BOARD, t) for t in (42, "x" * 1025)]
        await socket_.disconnect()
        return answers, invalid

    answers, invalid = asyncio.run(scenario())
    # Another user's (or a signed-out page's): the page asks its view again, which decides.
    assert answers == [FORBIDDEN, FORBIDDEN, FORBIDDEN, EXPIRED, EXPIRED]
    assert [answer["code"] for answer in invalid] == ["invalid_subscribe"] * 2  # not even read


def test_a_signed_name_stops_holding_once_its_user_loses_staff():
    staff = signed_in("alice", staff=True)
    token = fragments.signed_stream(BOARD, user("alice"))
    demoted = user("alice")

    async def scenario():
        before = await opened(staff)
        allowed = await subscribe_signed(before, BOARD, token)
        await before.disconnect()
        demoted.is_staff = False
        await sync_to_async(demoted.save)()
        after = await opened(staff)  # the same session, still signed in
        refused = await subscribe_signed(after, BOARD, token)
        await sync_to_async(fragments.send)(BOARD, "remove", "x")
        nothing = await after.receive_nothing()
        await after.disconnect()
        return allowed, refused, nothing

    allowed, refused, nothing = asyncio.run(scenario())
    assert allowed["type"] == "subscribed"
    assert refused == EXPIRED
    assert nothing


def test_a_change_of_access_closes_the_socket_without_ending_the_signed_stream_for_good():
    """The client reconnects and subscribes with its name again; only then is it judged."""
    staff = signed_in("alice", staff=True)
    promoted = user("alice")
    token = fragments.signed_stream(BOARD, promoted)

    async def scenario():
        socket_ = await opened(staff)
        await subscribe_signed(socket_, BOARD, token)
        promoted.is_superuser = True
        await sync_to_async(promoted.save)()
        frames = []
        while (output := await socket_.receive_output(timeout=3))["type"] != "websocket.close":
            frames.append(output["text"])
        return frames, output

    frames, closed = asyncio.run(scenario())
    assert closed["code"] == 4001
    assert not any('"unsubscribed"' in frame for frame in frames)


def test_a_signed_name_for_a_signed_out_visitor_lets_an_anonymous_socket_in():
    token = fragments.signed_stream(BOARD, AnonymousUser())

    async def scenario():
        socket_ = await opened()
        answer = await subscribe_signed(socket_, BOARD, token)
        await socket_.disconnect()
        return answer

    assert asyncio.run(scenario())["type"] == "subscribed"


def test_a_signed_name_past_its_age_is_answered_stream_expired_at_the_next_subscribe(settings):
    settings.REALTIME_STREAM_SIGNATURE_MAX_AGE = 2
    alice = signed_in("alice")
    token = fragments.signed_stream(BOARD, user("alice"))

    async def scenario():
        first = await opened(alice)
        fresh = await subscribe_signed(first, BOARD, token)
        await asyncio.sleep(3.1)  # past the age (signing counts whole seconds)
        await sync_to_async(fragments.send)(BOARD, "remove", "x")
        still_live = await first.receive_json_from()  # a subscription made in time goes on
        second = await opened(alice)  # a reconnect subscribes again with the same name
        expired = await subscribe_signed(second, BOARD, token)
        for socket_ in (first, second):
            await socket_.disconnect()
        return fresh, still_live, expired

    fresh, still_live, expired = asyncio.run(scenario())
    assert fresh["type"] == "subscribed"
    assert still_live["data"] == {"action": "remove", "target": "x"}
    assert expired == EXPIRED


def test_a_recheck_ends_a_signed_subscription_so_that_the_page_asks_its_view_again():
    alice = signed_in("alice")
    topics.register("fragments.<slug:name>", authorize=lambda user, name: name == "open")
    stored = user("alice")
    token = fragments.signed_stream(BOARD, stored)

    async def scenario():
        socket_ = await opened(alice)
        await subscribe_signed(socket_, BOARD, token)
        await ask(socket_, {"type": "subscribe", "topic": "fragments.open"})
        # Sent again with a name: a subscription authorize let in stays authorize's to check.
        await subscribe_signed(
            socket_, "fragments.open", fragments.signed_stream("fragments.open", stored)
        )
        await sync_to_async(topics.recheck)(stored)
        ended = await socket_.receive_json_from()
        await sync_to_async(fragments.send)([BOARD, "fragments.open"], "remove", "x")
        [message] = await received(socket_, 1)
        await socket_.disconnect()
        return ended, message

    ended, message = asyncio.run(scenario())
    assert ended == {"type": "unsubscribed", "topic": BOARD, "reason": "stream_expired"}
    assert message["topic"] == "fragments.open"


# --- Rendered once ------------------------------------------------------------------------------


def test_a_fragment_for_many_subscribers_and_topics_is_rendered_once(monkeypatch):
    renders = []
    real = html_fragments.render_to_string
    monkeypatch.setattr(
        html_fragments, "render_to_string", lambda *a, **k: renders.append(a) or real(*a, **k)
    )
    alice = signed_in("alice")
    token = fragments.signed_stream(BOARD, user("alice"))
    names = [BOARD, "fragments.a", "fragments.b"]

    async def scenario():
        sockets = [await opened(alice) for _ in range(20)]
        for socket_ in sockets:
            await subscribe_signed(socket_, BOARD, token)
        await sync_to_async(fragments.send)(
            names, "append", "list", template="realtime/broadcast_item.html", context={}
        )
        frames = [(await received(socket_, 1))[0] for socket_ in sockets]
        for socket_ in sockets:
            await socket_.disconnect()
        return frames

    frames = asyncio.run(scenario())
    assert len(renders) == 1
    assert all(frame == frames[0] for frame in frames)
    stored = TopicMessage.objects.filter(topic__in=names, event="html")
    assert sorted(stored.values_list("topic", flat=True)) == sorted(names)


# --- Model broadcasting -------------------------------------------------------------------------


@pytest.fixture
def live_groups(settings):
    """Groups kept live: on the topic "fragments.groups" and, named "vip-*", "fragments.vip";
    in the list "groups-<first letter>"."""
    use_templates(settings, ROOT / "tests/templates")

    def topics_of(group):
        return ["fragments.groups"] + (["fragments.vip"] if group.name.startswith("vip") else [])

    fragments.keep_live(
        Group,
        topics=topics_of,
        template="tests/group_card.html",
        target=lambda group: f"groups-{group.name[0]}",
    )
    yield
    uid = f"realtime.keep_live:{Group._meta.label}"
    for signal in (pre_save, post_save, post_delete):
        signal.disconnect(sender=Group, dispatch_uid=uid)


class AnyHtml(str):
    def __eq__(self, other):
        return isinstance(other, str) and other.startswith("<li")

    __hash__ = str.__hash__


ANY_HTML = AnyHtml()


def sent(*names: str) -> list[tuple[str, dict]]:
    rows = TopicMessage.objects.filter(topic__in=names).order_by("pk")
    return [(row.topic, row.data) for row in rows]


def test_a_kept_live_model_appends_replaces_moves_and_removes_after_commit(live_groups):
    group = Group.objects.create(name="alpha")
    group.name = "apple"  # the same list: replaced where it is
    group.save()
    group.name = "vip banana"  # another list, and a topic more: moved
    group.save()
    group.name = "beta"  # no longer a vip: removed from that topic
    group.save()
    pk = group.pk
    group.delete()

    def card(name):
        return f'<li id="group-{pk}">{name}</li>\n'

    groups, vip, element = "fragments.groups", "fragments.vip", f"group-{pk}"
    assert sent(groups, vip) == [
        (groups, {"action": "append", "target": "groups-a", "html": card("alpha")}),
        (groups, {"action": "replace", "target": element, "html": card("apple")}),
        (groups, {"action": "append", "target": "groups-v", "html": card("vip banana")}),
        (vip, {"action": "append", "target": "groups-v", "html": card("vip banana")}),
        (groups, {"action": "append", "target": "groups-b", "html": card("beta")}),
        (vip, {"action": "remove", "target": element}),
        (groups, {"action": "remove", "target": element}),
    ]


def test_a_kept_live_model_sends_the_row_as_committed_and_nothing_on_rollback(live_groups):
    with transaction.atomic():
        group = Group.objects.create(name="alpha")
        assert sent("fragments.groups") == []  # not before the commit
        group.name = "almond"
        group.save()
    with transaction.atomic():
        Group.objects.create(name="never")
        transaction.set_rollback(True)

    html = f'<li id="group-{group.pk}">almond</li>\n'
    assert sent("fragments.groups") == [
        ("fragments.groups", {"action": "append", "target": "groups-a", "html": html}),
        ("fragments.groups", {"action": "replace", "target": f"group-{group.pk}", "html": html}),
    ]  # each save sends the row as committed


def test_queryset_update_and_bulk_operations_send_nothing_as_with_djangos_signals(live_groups):
    Group.objects.bulk_create([Group(name="a1"), Group(name="a2")])
    Group.objects.filter(name="a1").update(name="a3")
    assert sent("fragments.groups") == []


def test_a_failing_template_is_logged_and_the_save_still_succeeds(live_groups, settings, caplog):
    use_templates(settings)
    group = Group.objects.create(name="kept")
    assert Group.objects.filter(pk=group.pk).exists()
    assert "Sending a live model's fragment failed" in caplog.text


def test_the_apps_functions_failing_never_fail_a_save_or_a_delete(live_groups, caplog):
    group = Group.objects.create(name="fine")
    fragments.keep_live(Group, topics=lambda group: 1 / 0, template="x.html", target="t")
    group.name = "still saved"
    group.save()
    group.delete()
    assert not Group.objects.exists()
    assert "Reading a live model's topics before its save failed" in caplog.text
    assert "Reading a deleted live model's topics failed" in caplog.text


def test_keep_live_again_replaces_the_first_call_and_takes_one_name(live_groups):
    fragments.keep_live(
        Group, topics=lambda group: "fragments.one", template="tests/group_card.html", target="t"
    )
    group = Group.objects.create(name="again")
    assert sent("fragments.groups") == []
    assert sent("fragments.one") == [
        ("fragments.one", {"action": "append", "target": "t", "html": ANY_HTML}),
    ]
    assert TopicMessage.objects.filter(topic__in=list("fragments.one")).count() == 0
    assert group.pk


def test_queryset_delete_sends_a_remove_for_each_row_as_djangos_signals_do(live_groups):
    first, second = Group.objects.create(name="a1"), Group.objects.create(name="a2")
    TopicMessage.objects.all().delete()
    Group.objects.filter(name__startswith="a").delete()
    assert sorted(data["target"] for _, data in sent("fragments.groups")) == sorted(
        [f"group-{first.pk}", f"group-{second.pk}"]
    )


# --- Client publishes ---------------------------------------------------------------------------


def test_a_client_may_not_publish_an_html_event_which_pages_would_apply():
    topics.register(
        "fragments.<slug:name>",
        authorize=lambda user, name: True,
        publish=lambda user, data, name: data,
    )
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        await ask(socket_, {"type": "subscribe", "topic": "fragments.chat"})
        fragment = {"action": "update", "target": "board", "html": "<form action=//evil>"}
        message = {"type": "publish", "topic": "fragments.chat", "data": fragment, "id": "p1"}
        refused = await ask(socket_, {**message, "event": "html"})
        nothing = await socket_.receive_nothing()
        await socket_.disconnect()
        return refused, nothing

    refused, nothing = asyncio.run(scenario())
    assert refused["code"] == "invalid_publish"
    assert refused["detail"] == "\"event\" 'html' is the server's own (a fragment of live HTML)."
    assert nothing
    assert not TopicMessage.objects.filter(topic="fragments.chat").exists()


# --- The tag ------------------------------------------------------------------------------------


def rendered_tag(source: str, who) -> str:
    request = RequestFactory().get("/board/")
    request.user = who
    return Template("{% load realtime %}" + source).render(Context({"request": request}))


def test_the_tag_renders_the_module_and_an_element_with_a_signed_name_and_the_position_now():
    get_user_model().objects.create_user("alice")
    alice = user("alice")
    fragments.send(BOARD, "remove", "x")
    html = rendered_tag(
        '{% realtime_stream "fragments.board" region="board" reload_url="/r/?a=1&b=2" %}', alice
    )
    epoch, offset = streams.position(BOARD)
    token = re.search(r'signed="([^"]+)"', html)[1]
    assert html == (
        '<script type="module" src="/static/realtime/live_html.mjs"></script>'
        f'<realtime-stream topic="{BOARD}" signed="{token}" since="{epoch}:1" region="board" '
        'reload-url="/r/?a=1&amp;b=2" ws-path="/ws/" hidden></realtime-stream>'
    )
    assert offset == 1
    assert verify(token, BOARD, alice) is Verdict.ALLOWED
    assert verify(token, "fragments.other", alice) is Verdict.FORBIDDEN
    assert verify(token, BOARD, AnonymousUser()) is Verdict.EXPIRED


def test_the_tag_for_the_users_own_topic_carries_its_position_and_no_signed_name():
    get_user_model().objects.create_user("alice")
    alice = user("alice")
    fragments.send_to_user(alice, "update", "cart", html=format_html("{}", 3))
    html = rendered_tag('{% realtime_stream "user" %}', alice)
    epoch, offset = streams.position(streams.user_stream(alice.pk))
    assert "signed=" not in html
    assert f'topic="user" since="{epoch}:{offset}"' in html and offset == 1


def test_the_tag_refuses_a_name_that_is_not_a_topic():
    with pytest.raises(ValueError, match="is not a topic name"):
        rendered_tag('{% realtime_stream "no spaces" %}', AnonymousUser())


def test_unsigned_the_tag_leaves_the_decision_to_authorize():
    html = rendered_tag(f'{{% realtime_stream "{BOARD}" signed=False %}}', AnonymousUser())
    assert "signed=" not in html and f'topic="{BOARD}"' in html

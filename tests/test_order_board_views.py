"""The example's order board page, rendered in process (project/demo: board, views, templates):
who may open it, and each order's card in its status's column, escaped. The board kept live in
Chromium: tests/test_order_board_browser.py."""

from __future__ import annotations

import re

import pytest

from project.demo.models import Order
from realtime import topics
from realtime.messaging import signed_streams, streams

pytestmark = pytest.mark.django_db(transaction=True)
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
BOARD = "/orders/board/"


def column_of(html: str, status: str) -> list[str]:
    """The item text of every card in one column, in the page's order."""
    found = re.search(rf'<ol id="orders-{status}"[^>]*>(.*?)</ol>', html, re.S)
    assert found, f"no column {status}"
    return re.findall(r'<p class="order-item">(.*?)</p>', found.group(1), re.S)


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_user("stan", is_staff=True)
    client.force_login(user, MODEL_BACKEND)
    return user


def test_a_visitor_is_sent_to_sign_in_first(client):
    response = client.get(BOARD, secure=True)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={BOARD}"


def test_a_signed_in_user_who_is_not_staff_is_told_the_board_is_for_staff(
    client, django_user_model
):
    client.force_login(django_user_model.objects.create_user("nina"), MODEL_BACKEND)
    Order.objects.create(customer="Ada", item="Secret soup")
    response = client.get(BOARD, secure=True)
    assert response.status_code == 403
    html = response.content.decode()
    assert "The order board is for staff only" in html
    assert "Secret soup" not in html


def test_staff_see_each_order_in_its_status_column(client, staff):
    soup = Order.objects.create(customer="Ada", item="Soup")
    Order.objects.create(customer="Bo", item="Bread", status=Order.Status.PREPARING)
    Order.objects.create(customer="Cy", item="Cake", status=Order.Status.READY)
    Order.objects.create(customer="Di", item="Dates")
    html = client.get(BOARD, secure=True).content.decode()
    assert column_of(html, "new") == ["Soup", "Dates"]
    assert column_of(html, "preparing") == ["Bread"]
    assert column_of(html, "ready") == ["Cake"]
    assert f'<li id="order-{soup.pk}" class="order-card" data-status="new">' in html
    assert '<h2 id="heading-preparing">Preparing</h2>' in html
    assert 'href="/admin/demo/order/"' in html and "demo/board.css" in html


def test_the_board_follows_its_topic_from_the_position_read_before_the_orders(
    client, staff, monkeypatch
):
    Order.objects.create(customer="Ada", item="Soup")  # its fragment: offset 1
    order_of_reads = []
    position = streams.position
    monkeypatch.setattr(
        streams, "position", lambda name: order_of_reads.append(name) or position(name)
    )
    queried = Order.objects.all
    monkeypatch.setattr(Order.objects, "all", lambda: order_of_reads.append("orders") or queried())
    html = client.get(BOARD, secure=True).content.decode()
    assert order_of_reads == ["orders.board", "orders"]
    epoch, offset = position("orders.board")
    assert offset == 1
    stream = re.search(r"<realtime-stream [^>]*></realtime-stream>", html).group(0)
    assert 'topic="orders.board"' in stream and f'since="{epoch}:1"' in stream
    assert 'region="board"' in stream and 'ws-path="/ws/"' in stream
    token = re.search(r'signed="([^"]+)"', stream).group(1)
    assert signed_streams.verify(token, "orders.board", staff) is signed_streams.Verdict.ALLOWED
    # Inside the region it reloads, before the lists it keeps live.
    assert html.index('<div id="board">') < html.index(stream) < html.index("<ol id=")
    assert "realtime/live_html.mjs" in html and "Live: changes show here" in html


def test_a_column_with_no_order_says_so_through_the_stylesheet(client, staff):
    html = client.get(BOARD, secure=True).content.decode()
    assert [column_of(html, s) for s in ("new", "preparing", "ready")] == [[], [], []]
    # Always in the page, hidden by board.css once its list has a card (live ones too).
    assert html.count('<p class="empty">No orders.</p>') == 3


def test_markup_typed_into_an_order_is_shown_as_text(client, staff):
    Order.objects.create(customer="<i>Eve</i>", item="<b>x</b><script>window.pwned=1</script>")
    html = client.get(BOARD, secure=True).content.decode()
    assert column_of(html, "new") == [
        "&lt;b&gt;x&lt;/b&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;"
    ]
    assert "&lt;i&gt;Eve&lt;/i&gt;" in html and "<script>window" not in html


def test_an_order_reads_as_its_item_and_customer(staff):
    order = Order.objects.create(customer="Ada", item="Soup")
    assert str(order) == f"Order {order.pk}: Soup for Ada"


def test_staff_change_an_orders_status_from_the_admins_list(client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", password="pw-root-0123456789")
    client.force_login(admin_user, MODEL_BACKEND)
    order = Order.objects.create(customer="Ada", item="Soup")
    html = client.get("/admin/demo/order/", secure=True).content.decode()
    assert 'name="form-0-status"' in html and "Soup" in html
    form = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-0-id": str(order.pk),
        "form-0-status": "ready",
        "_save": "Save",
    }
    response = client.post("/admin/demo/order/", form, secure=True)
    assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.READY


def fragments_sent() -> list[tuple[str, str, str]]:
    """(action, target, the card's item text or "") of each fragment on the board's topic."""
    sent = []
    for message in topics.history("orders.board").messages:
        data = message["data"]
        item = re.search(r'<p class="order-item">(.*?)</p>', data.get("html", ""), re.S)
        sent.append((data["action"], data["target"], item.group(1) if item else ""))
    return sent


def test_each_save_and_delete_of_an_order_sends_the_boards_its_card(staff):
    order = Order.objects.create(customer="Ada", item="Soup")
    order.status = Order.Status.PREPARING
    order.save()
    order.item = "Soup <hot>"
    order.save()
    Order.objects.filter(pk=order.pk).update(item="Not sent")  # no signal: documented
    card = f"order-{order.pk}"
    order.delete()
    assert fragments_sent() == [
        ("append", "orders-new", "Soup"),
        ("append", "orders-preparing", "Soup"),  # moved: its element goes to the new column
        ("replace", card, "Soup &lt;hot&gt;"),
        ("remove", card, ""),
    ]
    assert all(m["event"] == "html" for m in topics.history("orders.board").messages)

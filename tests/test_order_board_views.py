"""The example's order board page, rendered in process (project/demo: board, views, templates):
who may open it, and each order's card in its status's column, escaped. The board kept live in
Chromium: tests/test_order_board_browser.py."""

from __future__ import annotations

import re

import pytest

from project.demo.models import Order

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

"""The example's orders: what the live order board (/orders/board/) shows, column by status.
Staff change them in the admin; every open board follows (project/demo/board.py)."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        PREPARING = "preparing", "Preparing"
        READY = "ready", "Ready"

    customer = models.CharField(max_length=100)
    item = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # As a live board shows them: a card created or moved joins the end of its column.
        ordering = ["updated_at", "pk"]

    def __str__(self) -> str:
        return f"Order {self.pk}: {self.item} for {self.customer}"

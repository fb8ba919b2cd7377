"""The orders in Django's admin: every save there (the change form or the list's status
field) updates the open order boards."""

from __future__ import annotations

from django.contrib import admin

from project.demo.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "customer", "item", "status", "updated_at")
    list_editable = ("status",)
    list_filter = ("status",)
    search_fields = ("customer", "item")

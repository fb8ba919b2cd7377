"""App configuration for the example project's demo app."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "project.demo"
    label = "demo"

    def ready(self) -> None:
        from project.demo import live  # the models are loaded only now

        live.keep_board_live()

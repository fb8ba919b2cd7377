"""lobby.<room>: signed-in users follow and publish; an empty text is rejected."""

from __future__ import annotations

from typing import Any

from realtime import topics


def signed_in(user: Any, room: str) -> bool:
    return bool(user.is_authenticated)


def checked(user: Any, data: Any, room: str) -> Any:
    if not isinstance(data, dict) or not str(data.get("text", "")).strip():
        raise topics.Rejected("A message needs a text.")
    return {"text": data["text"].strip()}


topics.register("lobby.<slug:room>", authorize=signed_in, publish=checked)

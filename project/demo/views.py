"""The example project's pages: /chat/ (pick or type a room) and /chat/<room>/ (the room), for
signed-in users, whose script is static/demo/chat.mjs (docs/chat.md); /orders/board/, the live
order board, for staff (docs/order-board.md)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify

from project.demo import board, chat
from project.demo.topics import MAX_CHAT_TEXT, may_chat


@login_required
def rooms(request: HttpRequest) -> HttpResponse:
    typed = request.GET.get("room")
    error = ""
    if typed is not None:
        name = slugify(typed)[: chat.MAX_ROOM_NAME].strip("-_")
        if name:
            return redirect("chat-room", room=name)
        error = "A room name needs at least one letter or digit."
    context = {
        "rooms": chat.rooms_for(request.user, may_chat),
        "typed": typed or "",
        "error": error,
        "max_room_name": chat.MAX_ROOM_NAME,
    }
    return render(request, "demo/rooms.html", context, status=400 if error else 200)


@login_required
def room(request: HttpRequest, room: str) -> HttpResponse:
    if len(room) > chat.MAX_ROOM_NAME:
        raise Http404("No such room")
    if not may_chat(request.user, room):
        return render(request, "demo/room_forbidden.html", {"room": room}, status=403)
    history = chat.history(room)
    context = {
        "room": room,
        "topic": chat.topic_of(room),
        "epoch": history.epoch,
        "offset": history.offset,
        "messages": history.messages,
        "max_length": MAX_CHAT_TEXT,
    }
    return render(request, "demo/room.html", context)


@login_required
def order_board(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        return render(request, "demo/board_forbidden.html", status=403)
    # The callable, not its result: the template queries the orders after its
    # {% realtime_stream %} has read the topic's position, so that a change made in between is
    # replayed to the page rather than missed.
    return render(request, "demo/board.html", {"columns": board.columns, "topic": board.TOPIC})

"""The app's template tags: `{% load realtime %}` (realtime/templatetags/realtime.py)."""

"""The example project's own app: the topics its pages use (realtime finds `topics.py`)."""

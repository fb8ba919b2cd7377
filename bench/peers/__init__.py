"""Peer servers that bench/run.py measures the project against, doing the same work."""

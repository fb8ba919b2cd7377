"""A test app for tests/test_client.py's two-way server: a topic clients may publish to and
calls, registered as an app's topics.py and rpc.py are (tests.two_way.settings installs it)."""

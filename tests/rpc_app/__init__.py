"""A test app whose rpc.py the e2e servers discover (tests/rpc_settings.py installs it)."""

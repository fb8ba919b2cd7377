"""The management commands: devcert, runserver --tls, serve, broadcast, notify, apitoken."""

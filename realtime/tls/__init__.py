"""TLS: the development certificate authority (devca) and Mozilla's serving profiles."""

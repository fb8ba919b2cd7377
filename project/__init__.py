"""Project configuration: settings, URLs and the ASGI application. No app code lives here."""

"""The app's HTTP side: the demo page (`views`), security headers on every response
(`headers`), sign-in throttling (`signin`) and the windowed counters it and the publish API
count with (`counters`)."""

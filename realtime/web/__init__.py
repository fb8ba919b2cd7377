"""The app's HTTP side: the demo page (`views`) and its topics' rules (`page_topics`), security
headers on every response (`headers`), sign-in throttling (`signin_throttle` counts and
decides; `signin` hooks it into Django's sign-in, `password_reset` into the password reset) and
the windowed counters it and the publish API count with (`counters`)."""

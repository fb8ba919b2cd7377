"""Messages from a publisher to every socket that should have them: streams stored with offsets
(`streams`), broadcasts (`sending`) and topics (`topic_rules`, `topic_presence`), each worker's
one subscription to the channel layer and delivery to its sockets (`fanout`, `layer_link`,
`delivery`), sign-outs and access changes on open sockets (`sign_outs`, `rechecks`),
catch-up and history (`maintenance`), sockets counted by audience (`audience_counts`), and the
channel layer and Redis clients they use."""

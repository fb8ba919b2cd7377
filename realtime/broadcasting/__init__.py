"""Broadcasting: sending and replaying broadcasts, each worker's fan-out to its sockets,
presence counts, and the channel layer and Redis clients they use."""

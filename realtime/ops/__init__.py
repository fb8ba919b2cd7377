"""Operating the app: `/healthz` (`health`), `/metrics` (`metrics`), log formats and filters
(`logs`, `quiet_logs`) and the admin's live view (`live_stats`)."""

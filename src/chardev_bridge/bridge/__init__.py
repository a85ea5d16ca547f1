"""One bridge: its configuration, the data path, session verdicts and the orchestration."""

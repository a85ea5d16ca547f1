"""TLS over any trio stream: the sans-IO record engine, its stream, error wording, setup."""

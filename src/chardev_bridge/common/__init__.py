"""What every layer uses: backoff, repeat-quieting, host:port wording, start-up errors."""

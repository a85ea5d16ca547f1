"""Sockets as trio streams: the direct socket stream, its guards, kernel queue facts, tuning."""

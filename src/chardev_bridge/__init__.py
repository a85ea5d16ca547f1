"""chardev-bridge: carry a character device's byte stream to a remote peer over TCP/TLS."""

__version__ = "0.1.0"

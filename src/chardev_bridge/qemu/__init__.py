"""QEMU's TLS credentials and policy: x509 and PSK directories, priorities, allow-lists, checks."""

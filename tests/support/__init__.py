"""Helpers shared by every kind of test (and by bench/ and soak/), one copy of each.

* :mod:`.certs`: throw-away PKIs in QEMU's layout, `creds init` layouts, odd certificates.
* :mod:`.credcases`: credential dirs QEMU 7.2 loads or refuses, with its words.
* :mod:`.net`: loopback ports, TCP and TLS connections, a TLS server independent of the bridge.
* :mod:`.streams`: reading, exchanging and hashing bytes; a pty opened as an application does.
* :mod:`.bridges`: bridges run in-process, and their log lines.
* :mod:`.procs`: ``python -m chardev_bridge`` and other processes, their output and memory.
* :mod:`.peers`: real external peers (QEMU, gnutls, openssl, socat), found or skipped.
* :mod:`.hostile`: a bridge with a good session under way, and credentials of every bad peer.
* :mod:`.psk`: TLS-PSK keys and our side of a PSK handshake.
"""

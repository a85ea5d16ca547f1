#!/usr/bin/env bash
# Two VMs' serial ports joined over TLS through two bridges (e.g. on two hosts).
#
# Each VM has a plain pty serial port: QEMU prints "char device redirected to /dev/pts/N".
#   host A: qemu-system-x86_64 ... -chardev pty,id=ser0 -serial chardev:ser0
#   host B: qemu-system-x86_64 ... -chardev pty,id=ser0 -serial chardev:ser0
# One PKI for both ends: chardev-bridge creds init ./pki --hostname host-a.example.org
set -euo pipefail
case "${1:-}" in
  a)  # host A: TLS server, local end = VM A's pty
      exec chardev-bridge --server --host 0.0.0.0 --port 9000 \
          --tls-creds ./pki/server --local "tty:${2:?pty path of VM A}" ;;
  b)  # host B: TLS client, local end = VM B's pty; reconnects if A restarts
      exec chardev-bridge --host host-a.example.org --port 9000 \
          --tls-creds ./pki/client --local "tty:${2:?pty path of VM B}" --reconnect 1 ;;
  *)  echo "usage: $0 a|b /dev/pts/N" >&2; exit 2 ;;
esac

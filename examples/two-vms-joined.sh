#!/usr/bin/env bash
# Two VMs joined over TLS through two bridges (e.g. on two hosts), guest ttyS1 <-> guest ttyS1.
#
# Join a *second* serial port, not ser0: the first one (ttyS0) is the guest's console, and a
# getty, the kernel's messages and the boot would all cross to the other VM.
# Each VM gets a unix socket chardev for it; its path stays the same when the VM restarts
# (a -chardev pty gets a new /dev/pts/N each time, and the bridge never reopens a pty number):
#   host A: qemu-system-x86_64 ... -serial mon:stdio \
#             -chardev socket,id=link0,path=/run/vmA-link.sock,server=on,wait=off \
#             -serial chardev:link0
#   host B: the same with /run/vmB-link.sock
# One PKI for both ends: chardev-bridge creds init ./pki --hostname host-a.example.org
#
# In both guests, before using the line, make ttyS1 raw and stop it echoing:
#   stty -F /dev/ttyS1 raw -echo
# With echo on, each side echoes what the other sends back to it: output comes out garbled,
# and stale bytes keep circulating and reach whoever opens the port next, minutes later.
# Then e.g. guest A: cat /dev/ttyS1    guest B: echo hello > /dev/ttyS1
set -euo pipefail
case "${1:-}" in
  a)  # host A: TLS server; each session connects to VM A's socket (waits while A restarts)
      exec chardev-bridge --server --host 0.0.0.0 --port 9000 \
          --tls-creds ./pki/server --local "unix:${2:-/run/vmA-link.sock}" ;;
  b)  # host B: TLS client; reconnects when A or its bridge restarts (a refused retry: 0.1 s on)
      exec chardev-bridge --host host-a.example.org --port 9000 \
          --tls-creds ./pki/client --local "unix:${2:-/run/vmB-link.sock}" --reconnect 0.5 ;;
  *)  echo "usage: $0 a|b [unix socket path of the VM's second serial port]" >&2; exit 2 ;;
esac

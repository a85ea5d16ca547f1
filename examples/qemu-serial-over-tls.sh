#!/usr/bin/env bash
# A VM's serial port exposed over TLS by QEMU itself, reached as a local pty on another machine.
#
# On the VM host (QEMU is the TLS server; it asks for a client certificate):
#   chardev-bridge creds init ./pki --hostname vmhost.example.org --ip 192.0.2.10
#   qemu-system-x86_64 ... \
#     -object tls-creds-x509,id=tls0,dir=$PWD/pki/server,endpoint=server \
#     -chardev socket,id=ser0,host=0.0.0.0,port=9000,server=on,wait=off,tls-creds=tls0 \
#     -serial chardev:ser0
# Copy ./pki/client to the console machine, then there (this script):
set -euo pipefail
CREDS=${CREDS:-./pki/client}
HOST=${HOST:-vmhost.example.org}
# --reconnect 0.5: once QEMU restarts (refused meanwhile, retried from 0.1 s) the bridge is back
# within half a second, before QEMU (wait=off) drops much of the boot. --hold-max 2 (a pty's
# default, written out): what is typed while the VM is down is dropped, not run in the next boot.
exec chardev-bridge --host "$HOST" --port 9000 --tls-creds "$CREDS" \
    --link "$HOME/vm-console" --reconnect 0.5 --hold-max 2
# Now attach any terminal program to the pty:  picocom -b 115200 ~/vm-console

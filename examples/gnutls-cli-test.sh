#!/usr/bin/env bash
# Test a TLS bridge the way QEMU's documentation tests a TLS chardev: with gnutls-cli.
# Runs on one machine, loopback only; type into gnutls-cli and the bytes appear on the pty.
set -euo pipefail
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
chardev-bridge creds init "$work/pki" >/dev/null
chardev-bridge --server --host 127.0.0.1 --port 9000 --tls-creds "$work/pki/server" \
    --link "$work/console" &
sleep 1
echo "pty: $(readlink "$work/console")  (e.g. 'cat $work/console' in another terminal)"
gnutls-cli --x509cafile "$work/pki/client/ca-cert.pem" \
    --x509certfile "$work/pki/client/client-cert.pem" \
    --x509keyfile "$work/pki/client/client-key.pem" \
    -p 9000 127.0.0.1

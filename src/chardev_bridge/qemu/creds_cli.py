"""``chardev-bridge creds init|issue|check|revoke``: make and check QEMU credential directories."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.credcheck import check_creds
from chardev_bridge.qemu.credfiles import guess_endpoint, has_errors, role_mismatch
from chardev_bridge.tls.setup import Endpoint

EPILOG = """\
examples:
  chardev-bridge creds init /etc/pki/qemu-chardev --hostname vmhost.example --ip 192.0.2.10
  chardev-bridge creds issue DIR --endpoint client --out DIR/client2 --dn 'O=Example,CN=ops'
  chardev-bridge creds check DIR/server
  chardev-bridge creds revoke DIR --cert DIR/client2/client-cert.pem
"""


def _read_password(path: str | None) -> bytes | None:
    if path is None:
        return None
    # QEMU's secret objects read the whole file; a trailing newline is a common accident.
    return Path(path).read_bytes().rstrip(b"\r\n")


def _add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-type",
        choices=pki.KEY_TYPES,
        default="ecdsa-p256",
        help="key algorithm (default ecdsa-p256; gnutls's SECURE192/256 need ecdsa-p384)",
    )
    p.add_argument(
        "--days", type=int, default=pki.DEFAULT_DAYS, help="lifetime in days (default %(default)s)"
    )
    p.add_argument(
        "--key-password-file",
        metavar="FILE",
        help="encrypt the new private key(s) with the password in FILE (QEMU's passwordid)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chardev-bridge creds",
        description="Make and check TLS credential directories in QEMU's layout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser(
        "init",
        help="create DIR/ca, DIR/server and DIR/client",
        description="Create a CA and server and client credential dirs QEMU loads as they are.",
    )
    init.add_argument("dir", help="directory to create (existing files are never overwritten)")
    init.add_argument(
        "--hostname",
        action="append",
        help="server DNS name (repeatable; default localhost when no --hostname/--ip)",
    )
    init.add_argument(
        "--ip", action="append", help="server IP address (repeatable; default 127.0.0.1 and ::1)"
    )
    init.add_argument(
        "--client-dn",
        default=pki.DEFAULT_CLIENT_DN,
        help="client subject, first RDN first as tls-authz prints it (default %(default)r)",
    )
    init.add_argument("--server-dn", help="server subject (default CN=<first hostname>)")
    init.add_argument("--ca-dn", default=pki.DEFAULT_CA_DN, help="CA subject (default %(default)r)")
    _add_key_options(init)

    issue = sub.add_parser(
        "issue",
        help="issue another server or client certificate from DIR/ca",
        description="Issue a certificate from DIR/ca into a new credentials dir OUT.",
    )
    issue.add_argument("dir", help="the directory made by `creds init` (its ca/ is used)")
    issue.add_argument(
        "--endpoint",
        choices=("server", "client"),
        required=True,
        help="the certificate's TLS role: server (serverAuth, with --hostname/--ip names)"
        " or client (clientAuth, for tls-authz by --dn)",
    )
    issue.add_argument("--out", required=True, help="credentials dir to write (new files only)")
    issue.add_argument("--dn", help="subject, first RDN first (default CN=<name> or CN=client)")
    issue.add_argument("--hostname", action="append", default=[], help="server DNS name")
    issue.add_argument("--ip", action="append", default=[], help="server IP address")
    _add_key_options(issue)

    check = sub.add_parser(
        "check",
        help="run QEMU's load-time checks on a credentials dir",
        description="Check DIR as QEMU 7.2 would load it; a `creds init` root checks its "
        "server/ and client/ dirs. Exit status 1 when QEMU would refuse it.",
    )
    check.add_argument("dir")
    check.add_argument("--endpoint", choices=("server", "client"), help="default: from the files")
    check.add_argument("--key-password-file", metavar="FILE", help="password of an encrypted key")
    check.add_argument("--quiet", "-q", action="store_true", help="print errors and warnings only")

    revoke = sub.add_parser(
        "revoke",
        help="revoke certificates in the CRL (ca-crl.pem)",
        description="Add certificates to DIR/ca/ca-crl.pem and install it in DIR/server "
        "(and every --install dir). With nothing to revoke, re-signs the CRL.",
    )
    revoke.add_argument("dir", help="the directory made by `creds init`")
    revoke.add_argument("--serial", action="append", default=[], help="serial number in hex")
    revoke.add_argument("--cert", action="append", default=[], help="certificate file to revoke")
    revoke.add_argument(
        "--install", action="append", default=[], help="also copy the CRL into this server dir"
    )
    revoke.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_CRL_DAYS,
        help="CRL validity in days (default %(default)s); re-run before it runs out",
    )
    return parser


def _cmd_init(args: argparse.Namespace) -> int:
    # Each default holds unless its own option is given: `--hostname vm` still gets the
    # loopback IPs (a bridge or QEMU on this machine connects to 127.0.0.1); only `--ip`
    # alone leaves out the default name.
    hostnames = args.hostname or ([] if args.ip else list(pki.DEFAULT_HOSTNAMES))
    ips = args.ip or list(pki.DEFAULT_IPS)
    layout = pki.init_pki(
        args.dir,
        hostnames=hostnames,
        ips=ips,
        client_dn=args.client_dn,
        server_dn=args.server_dn,
        ca_dn=args.ca_dn,
        key_type=args.key_type,
        days=args.days,
        key_password=_read_password(args.key_password_file),
    )
    # Absolute paths: the lines are pasted into QEMU command lines and scripts that run
    # from other directories.
    server, client = layout.server_dir.resolve(), layout.client_dir.resolve()
    print(f"created {layout.ca_dir.resolve()} (keep ca-key.pem private)")
    print(f"created {server}: the TLS server's credentials")
    print(f"  QEMU:   -object tls-creds-x509,id=tls0,dir={server},endpoint=server")
    # The first name the server certificate carries is the one that passes its name check.
    named = bool(args.hostname or args.ip)
    host = (hostnames or ips)[0]
    listen = f" --host {host}" if named else ""
    print(f"  bridge: chardev-bridge --server{listen} --tls-creds {server}")
    print(f"created {client}: the TLS client's credentials")
    print(f"  QEMU:   -object tls-creds-x509,id=tls0,dir={client},endpoint=client")
    print(f"  bridge: chardev-bridge --host {host} --tls-creds {client}")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    leaf = pki.issue_into(
        Path(args.dir) / "ca",
        args.out,
        args.endpoint,
        dn=args.dn,
        hostnames=args.hostname,
        ips=args.ip,
        key_type=args.key_type,
        days=args.days,
        key_password=_read_password(args.key_password_file),
    )
    print(f"created {args.out}: {args.endpoint} certificate serial {leaf.cert.serial_number:x}")
    return 0


def _check_one(
    directory: str, endpoint: Endpoint | None, password: bytes | None, quiet: bool
) -> bool:
    chosen = endpoint or guess_endpoint(directory) or "client"
    if endpoint is None:
        print(f"{directory}: checking as endpoint={chosen}")
    mismatch = role_mismatch(directory, chosen)
    if mismatch is not None:
        # QEMU would load it and fail only at the first connection: say it now.
        other = "client" if chosen == "server" else "server"
        print(f"error: {mismatch}; check it with --endpoint {other}, or check the {chosen} dir")
        return False
    findings = check_creds(directory, chosen, password=password)
    for finding in findings:
        if not (quiet and finding.level == "info"):
            print(finding)
    return not has_errors(findings)


def _cmd_check(args: argparse.Namespace) -> int:
    password = _read_password(args.key_password_file)
    base = Path(args.dir)
    # A `creds init` root holds no ca-cert.pem itself: check the dirs QEMU would load.
    subdirs = [(base / "server", "server"), (base / "client", "client")]
    if args.endpoint is not None:
        subdirs = [(d, e) for d, e in subdirs if e == args.endpoint]
    if not (base / "ca-cert.pem").exists() and any(d.is_dir() for d, _ in subdirs):
        ok = True
        for directory, endpoint in subdirs:
            if directory.is_dir():
                print(f"== {directory} (endpoint={endpoint})")
                ok &= _check_one(str(directory), endpoint, password, args.quiet)  # type: ignore[arg-type]
        return 0 if ok else 1
    return 0 if _check_one(args.dir, args.endpoint, password, args.quiet) else 1


def _cmd_revoke(args: argparse.Namespace) -> int:
    serials = [pki.parse_serial(s) for s in args.serial]
    for path in args.cert:
        try:
            serials.append(x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number)
        except (OSError, ValueError) as exc:
            raise pki.PkiError(f"cannot read certificate {path}: {exc}") from None
    install = list(args.install)
    server_dir = Path(args.dir) / "server"
    if server_dir.is_dir():
        install.insert(0, server_dir)
    crl = pki.revoke(Path(args.dir) / "ca", serials, install=install, days=args.days)
    listed = ", ".join(f"{r.serial_number:x}" for r in crl) or "nothing"
    targets = ", ".join(str(Path(d) / "ca-crl.pem") for d in [Path(args.dir) / "ca", *install])
    print(f"CRL revokes {listed}; valid until {crl.next_update_utc:%Y-%m-%d}; written to {targets}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chardev-bridge creds ...`` with ``argv`` (the words after ``creds``)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    commands = {"init": _cmd_init, "issue": _cmd_issue, "check": _cmd_check, "revoke": _cmd_revoke}
    try:
        return commands[args.command](args)
    except (pki.PkiError, OSError) as exc:
        print(f"chardev-bridge creds: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

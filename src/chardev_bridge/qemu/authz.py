"""Allow-lists of distinguished names, matched the way QEMU's `tls-authz` matches them.

QEMU's ``authz-list`` object (authz/list.c) holds rules ``{match, policy, format}``; the first
rule whose ``match`` fits the identity decides, and the list's ``policy`` decides when none does.
``format`` is ``exact`` (the default: string equality) or ``glob`` (GLib's
``g_pattern_match_simple``: ``*`` is any run of characters, ``?`` exactly one, nothing else is
special and there is no escape). For TLS the identity is the peer certificate's DN as
:func:`~chardev_bridge.qemu.dn.qemu_dn` prints it. ``authz-listfile`` reads the same structure
from a JSON file (qapi/authz.json: ``AuthZListProperties``), which :func:`load_authz_file`
parses.

QEMU 7.2 cannot actually create an ``authz-listfile``: QAPI knows the type as ``authz-listfile``
and QOM as ``authz-list-file``, and each name is refused by the other check. The same JSON works
there inline: ``-object '{"qom-type": "authz-list", "id": "auth0", "policy": "deny", ...}'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cryptography import x509

Policy = Literal["allow", "deny"]
Format = Literal["exact", "glob"]
_POLICIES: tuple[Policy, ...] = ("deny", "allow")
_FORMATS: tuple[Format, ...] = ("exact", "glob")


class AuthzFileError(ValueError):
    """An authz-list file cannot be used; the message is one line naming the file."""


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a GLib ``g_pattern_match_simple`` pattern: ``*`` and ``?`` only, no escapes."""
    parts = ((".*" if ch == "*" else "." if ch == "?" else re.escape(ch)) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class AuthzRule:
    """One authz-list rule: when ``match`` fits the identity, ``policy`` is the answer."""

    match: str
    policy: Policy = "allow"
    format: Format = "exact"

    def __post_init__(self) -> None:
        if self.policy not in _POLICIES:
            raise ValueError(f"policy must be 'allow' or 'deny', not {self.policy!r}")
        if self.format not in _FORMATS:
            raise ValueError(f"format must be 'exact' or 'glob', not {self.format!r}")

    def matches(self, identity: str) -> bool:
        """Whether this rule applies to ``identity``."""
        if self.format == "exact":
            return identity == self.match
        return glob_to_regex(self.match).fullmatch(identity) is not None


@dataclass(frozen=True)
class AuthzDecision:
    """The outcome for one identity: ``rule`` is the deciding rule, None for the default."""

    identity: str
    allowed: bool
    rule: AuthzRule | None
    rule_index: int | None

    def describe(self) -> str:
        """One line for a log: who, allowed or denied, and why."""
        verdict = "allowed" if self.allowed else "denied"
        if self.rule is None or self.rule_index is None:
            return f"{self.identity!r} {verdict} by the default policy"
        return (
            f"{self.identity!r} {verdict} by rule {self.rule_index + 1} "
            f"({self.rule.format} {self.rule.match!r})"
        )


@dataclass(frozen=True)
class AuthzList:
    """QEMU's authz-list: ordered rules, first match wins, ``policy`` when none matches."""

    rules: tuple[AuthzRule, ...] = ()
    policy: Policy = "deny"

    def decide(self, identity: str) -> AuthzDecision:
        """Evaluate the rules for ``identity`` as QEMU's qauthz_list_is_allowed does."""
        for index, rule in enumerate(self.rules):
            if rule.matches(identity):
                return AuthzDecision(identity, rule.policy == "allow", rule, index)
        return AuthzDecision(identity, self.policy == "allow", None, None)

    def is_allowed(self, identity: str) -> bool:
        """True when ``identity`` (a DN from :func:`~chardev_bridge.qemu.dn.qemu_dn`) may
        connect."""
        return self.decide(identity).allowed

    def allows_name(self, name: x509.Name) -> bool:
        """True when a certificate subject may connect (formats it with
        :func:`~chardev_bridge.qemu.dn.qemu_dn`)."""
        from chardev_bridge.qemu.dn import qemu_dn

        return self.is_allowed(qemu_dn(name))

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> AuthzList:
        """The list for repeated ``--tls-authz PATTERN``: allow-if-glob-matches, else deny.

        A pattern without ``*`` or ``?`` is an exact match either way, as in QEMU.
        """
        return cls(tuple(AuthzRule(p, "allow", "glob") for p in patterns), "deny")


def _fail(path: str, message: str) -> AuthzFileError:
    return AuthzFileError(f"{path}: {message}")


def _enum(path: str, where: str, value: object, choices: tuple[str, ...]) -> str:
    import json  # only an allow-list file needs it

    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        return_error = f"{where} must be {allowed}, not {json.dumps(value)}"
        raise _fail(path, return_error)
    return value


def _rule(path: str, index: int, raw: object) -> AuthzRule:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(
            path,
            f"{where} must be a JSON object like "
            '{"match": "CN=...", "policy": "allow", "format": "glob"}',
        )
    # QEMU's QAPI input visitor is strict: unknown members are an error, not ignored.
    unknown = sorted(set(raw) - {"match", "policy", "format"})
    if unknown:
        raise _fail(path, f"{where} has unexpected member {unknown[0]!r}")
    if "match" not in raw:
        raise _fail(path, f"{where} lacks 'match'")
    if not isinstance(raw["match"], str):
        raise _fail(path, f"{where}.match must be a string")
    if "policy" not in raw:
        raise _fail(path, f"{where} lacks 'policy' ('allow' or 'deny')")
    policy = _enum(path, f"{where}.policy", raw["policy"], _POLICIES)
    fmt = _enum(path, f"{where}.format", raw.get("format", "exact"), _FORMATS)
    return AuthzRule(raw["match"], policy, fmt)  # type: ignore[arg-type]


def parse_authz(data: object, path: str = "<authz>") -> AuthzList:
    """Build an :class:`AuthzList` from decoded ``AuthZListProperties`` JSON."""
    if not isinstance(data, Mapping):
        raise _fail(path, "must contain a JSON object")
    unknown = sorted(set(data) - {"policy", "rules"})
    if unknown:
        raise _fail(path, f"unexpected member {unknown[0]!r} (only 'policy' and 'rules')")
    policy = _enum(path, "policy", data.get("policy", "deny"), _POLICIES)
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise _fail(path, "'rules' must be a JSON array")
    rules = tuple(_rule(path, i, r) for i, r in enumerate(raw_rules))
    return AuthzList(rules, policy)  # type: ignore[arg-type]


def load_authz_file(path: str | os.PathLike[str]) -> AuthzList:
    """Read a QEMU ``authz-listfile`` JSON file.

    ``{"policy": "deny", "rules": [{"match": "CN=*", "policy": "allow", "format": "glob"}]}``;
    ``policy`` defaults to deny, ``rules`` to none, a rule's ``format`` to exact. Raises
    :class:`AuthzFileError` (a ValueError) with a one-line message for anything QEMU would
    refuse. QEMU's JSON parser also takes single-quoted strings; this one does not.
    """
    import json  # only an allow-list file needs it

    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise _fail(name, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _fail(name, "is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            name, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _fail(name, "is nested too deeply to be an authz-list") from None
    return parse_authz(data, name)

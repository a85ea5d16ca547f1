"""Property tests (hypothesis) for every parser a user feeds: ``--local`` specs, gnutls priority
strings, authz-list JSON and its globs. Whatever the input: a result, or a ValueError with a
one-line message; never a crash. (Data-path chunkings and close orders are in
test_datapath.py.)"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chardev_bridge.local import LOCAL_KINDS, LocalSpec, LocalSpecError, parse_local_spec
from chardev_bridge.qemu.authz import (
    AuthzFileError,
    AuthzList,
    AuthzRule,
    load_authz_file,
    parse_authz,
)
from chardev_bridge.qemu.priority import PriorityError, TlsPriority, apply_priority, parse_priority

SETTINGS = settings(max_examples=300, deadline=None)


def assert_clear(exc: BaseException) -> None:
    """A message a person can read: not empty, one line."""
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} without a message"
    assert "\n" not in message, message


# -- --local specs ------------------------------------------------------------------------------

hosts = st.one_of(
    st.sampled_from(["localhost", "127.0.0.1", "::1", "[::1]", "", "a:b", "[", "]", "host"]),
    st.text(max_size=12),
)
ports = st.one_of(
    st.integers(-5, 70000).map(str), st.sampled_from(["", "0", "65535", "65536", "0x10", " 1"])
)
local_specs = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda kind, sep, rest: kind + sep + rest,
        st.sampled_from([*LOCAL_KINDS, "serial", "TCP", "pty "]),
        st.sampled_from([":", "", "::"]),
        st.one_of(
            st.text(max_size=20),
            st.builds(lambda h, p: f"{h}:{p}", hosts, ports),
            st.builds(lambda h, p: f"[{h}]:{p}", hosts, ports),
        ),
    ),
)


@SETTINGS
@given(text=local_specs)
@example("tcp:[::1]:0")
@example("tcp-listen::80")
@example("unix:")
def test_local_spec_parses_or_says_why_and_round_trips(text: str) -> None:
    try:
        spec = parse_local_spec(text)
    except ValueError as exc:
        assert_clear(exc)
        return
    assert isinstance(spec, LocalSpec) and spec.kind in LOCAL_KINDS
    if spec.kind in ("tcp", "tcp-listen"):
        assert spec.host and 0 <= spec.port <= 65535
    if spec.kind in ("tty", "unix", "unix-listen"):
        assert spec.path
    assert parse_local_spec(str(spec)) == spec


# str.isdigit() accepts superscript digits that int() refuses: such a port still gets a
# LocalSpecError that says what is wrong with it, not a bare "invalid literal for int()".
@pytest.mark.parametrize("text", ["tcp:host:²", "tcp-listen:[::1]:³"])
def test_local_spec_with_a_superscript_port_gets_a_clear_error(text: str) -> None:
    with pytest.raises(LocalSpecError, match="port"):
        parse_local_spec(text)


# -- gnutls priority strings -------------------------------------------------------------------

TOKENS = [
    "NORMAL", "SECURE128", "SECURE192", "SECURE256", "SECURE", "PFS", "PERFORMANCE", "NONE",
    "@SYSTEM", "@KEY", "@LOOP", "@KEY,SYSTEM", "@MISSING",
    "+VERS-TLS1.3", "-VERS-TLS1.3", "+VERS-TLS1.2", "-VERS-TLS1.2", "-VERS-ALL", "+VERS-ALL",
    "-VERS-TLS-ALL", "+VERS-TLS1.0", "-VERS-TLS1.1", "+VERS-DTLS1.2", "+VERS-TLS9.9",
    "+AES-256-GCM", "-AES-256-GCM", "+AES-128-CCM", "-CIPHER-ALL", "+CIPHER-ALL", "!AES-128-CBC",
    "+CHACHA20-POLY1305", "+CAMELLIA-256-GCM", "-MAC-ALL", "+SHA256", "+SHA384", "-SHA1",
    "+AEAD", "-KX-ALL", "+KX-ALL", "-RSA", "+ECDHE-ECDSA", "+DHE-RSA", "-GROUP-ALL",
    "+GROUP-SECP384R1", "+GROUP-X25519", "+GROUP-FFDHE2048", "-GROUP-SECP256R1", "+GROUP-BOGUS",
    "%COMPAT", "%SERVER_PRECEDENCE", "%NO_TICKETS", "%PROFILE_HIGH", "-COMP-ALL", "+COMP-NULL",
    "+SIGN-ALL", "", " ", "AES", "+", "-", "%",
]  # fmt: skip
KEYWORDS = {"KEY": "SECURE256:-VERS-TLS1.2", "LOOP": "@LOOP2", "LOOP2": "@LOOP"}
priorities = st.one_of(
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8).map(":".join),
    st.text(max_size=40),
)


@SETTINGS
@given(text=priorities, server=st.booleans())
@example("@LOOP", False)
@example("NONE:+VERS-TLS1.3:+AES-128-CCM", True)
@example("NORMAL:-VERS-ALL", False)
def test_priority_string_maps_or_says_why_and_what_maps_applies(text: str, server: bool) -> None:
    try:
        prio = parse_priority(text, keywords=KEYWORDS)
    except PriorityError as exc:
        assert_clear(exc)
        return
    assert isinstance(prio, TlsPriority)
    assert ssl.TLSVersion.TLSv1_2 <= prio.minimum_version <= prio.maximum_version
    assert prio.maximum_version <= ssl.TLSVersion.TLSv1_3
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        apply_priority(ctx, prio)
    except PriorityError as exc:  # OpenSSL refusing a combination is reported, not raised raw
        assert_clear(exc)
        return
    assert ctx.minimum_version == prio.minimum_version
    assert ctx.maximum_version == prio.maximum_version


def test_priority_keywords_that_refer_to_each_other_end_in_an_error() -> None:
    with pytest.raises(PriorityError, match="refer to each other"):
        parse_priority("@LOOP", keywords=KEYWORDS)


# -- authz lists: the JSON and the globs ----------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
json_values = st.recursive(
    scalars | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
words = st.sampled_from(["allow", "deny", "exact", "glob", "ALLOW", "", "CN=*"])
rules = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"match": st.text(max_size=12)},
            optional={"policy": words | json_values, "format": words | json_values},
        ),
        st.dictionaries(
            st.sampled_from(["match", "policy", "format", "extra"]), words | json_values
        ),
        json_values,
    ),
    max_size=4,
)
authz_docs = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"policy": words | json_values, "rules": rules}),
    st.dictionaries(st.sampled_from(["policy", "rules", "identity"]), words | rules, max_size=3),
)


@SETTINGS
@given(doc=authz_docs, identity=st.text(max_size=20))
def test_authz_json_parses_or_says_why_naming_the_file(doc: Any, identity: str) -> None:
    try:
        authz = parse_authz(doc, "rules.json")
    except AuthzFileError as exc:
        assert_clear(exc)
        assert str(exc).startswith("rules.json: ")
        return
    assert isinstance(authz, AuthzList)
    decision = authz.decide(identity)  # and deciding never fails either
    assert decision.allowed in (True, False)
    assert_clear(ValueError(decision.describe()))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()))
def test_authz_file_of_any_content_loads_or_says_why(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "authz.json"
    path.write_bytes(content)
    try:
        load_authz_file(path)
    except AuthzFileError as exc:
        assert_clear(exc)
        assert str(exc).startswith(f"{path}: ")


# json.loads raises RecursionError on deeply nested input, not JSONDecodeError: the file
# still gets one line naming it (an AuthzFileError), not a traceback.
def test_authz_file_nested_too_deep_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "authz.json"
    path.write_text("[" * 100_000)
    with pytest.raises(AuthzFileError):
        load_authz_file(path)


def reference_glob(pattern: str, text: str) -> bool:
    """GLib's g_pattern_match_simple semantics: ``*`` any run, ``?`` one char, no escapes."""
    # Dynamic programming over (pattern position, text position).
    reach = {0}
    for ch in pattern:
        if ch == "*":
            reach = set(range(min(reach), len(text) + 1)) if reach else set()
        elif ch == "?":
            reach = {i + 1 for i in reach if i < len(text)}
        else:
            reach = {i + 1 for i in reach if i < len(text) and text[i] == ch}
    return len(text) in reach


glob_alphabet = st.sampled_from([*"ab*?=,.\\[]()^$|+{}", "CN", "O=", "é"])
patterns = st.lists(glob_alphabet, max_size=10).map("".join)
identities = st.lists(st.sampled_from([*"ab=,.\\[]()^$|+{}*?", "CN", "é", "\n"]), max_size=12)


@SETTINGS
@given(pattern=patterns, identity=identities.map("".join))
@example("CN=*", "CN=a\nb")
@example("a\\*", "a\\bb")
@example("[ab]", "a")
def test_authz_glob_matches_exactly_like_glib(pattern: str, identity: str) -> None:
    rule = AuthzRule(pattern, "allow", "glob")
    assert rule.matches(identity) == reference_glob(pattern, identity)
    assert AuthzRule(pattern, "allow", "exact").matches(identity) == (pattern == identity)
    # A pattern always matches itself when it has no wildcard.
    if "*" not in pattern and "?" not in pattern:
        assert rule.matches(pattern)

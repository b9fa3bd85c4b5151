"""s6-tcprules check: how the rules decide for a client, as text or JSON.

The facts about the client (its address, its name) come from the command
line or, with IP ``-``, from the lines of stdin; what its handshake would
tell (SNI name, ALPN protocol, certificate) from the options. Both stages are
run as the server runs them (``s6tls.rules.edit.explain``, then
``s6tls.rules.verdict.decide_tls``); the second is shown when an option
describes the handshake or one of its keys is found.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from dataclasses import dataclass
from typing import Literal

from s6tls.commands.tcprules.failure import EXIT_USAGE, Failed
from s6tls.commands.tcprules.listing import changes, show, variables
from s6tls.rules import DirRules, Rule, RulesError, RuleSource, check_dir
from s6tls.rules.cdbfile import CdbRules
from s6tls.rules.edit import Explanation, explain
from s6tls.rules.verdict import TlsDecision, decide_tls
from s6tls.sslvars import cert_hash

# How check answers: the decision and what it changes, the same with the keys tried, or JSON.
_Form = Literal["short", "verbose", "json"]


def check(args: dict[str, object]) -> int:
    """Answer for IP [NAME], or for each line of stdin; 0 if every client is allowed, else 1."""
    source: RuleSource
    if args["-i"] is not None:
        directory = str(args["-i"])
        try:
            check_dir(directory)  # the server would deny everyone; say why instead
        except RulesError as e:
            raise Failed(str(e)) from None
        source = DirRules(directory)
    else:
        source = CdbRules(str(args["-x"]))
    names = not args["-H"]
    form: _Form = "json" if args["--json"] else "verbose" if args["-v"] else "short"
    tls = _handshake(args)
    if args["IP"] != "-":
        name = None if args["NAME"] is None else str(args["NAME"])
        return 0 if _answer(source, str(args["IP"]), name, names, form, tls) else 1
    if args["NAME"] is not None:
        raise Failed("NAME cannot follow - (give names on the lines of stdin)", EXIT_USAGE)
    allowed = True
    answered = False
    for number, line in enumerate(sys.stdin.buffer.read().splitlines(), start=1):
        words = os.fsdecode(line).split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise Failed(f"stdin line {number}: expected IP [NAME]", EXIT_USAGE)
        if answered and form != "json":
            sys.stdout.write("\n")  # a blank line between two answers
        answered = True
        name = words[1] if len(words) == 2 else None
        try:
            allowed = _answer(source, words[0], name, names, form, tls) and allowed
        except Failed as e:
            raise Failed(f"stdin line {number}: {e}", e.status) from None
    return 0 if allowed else 1


@dataclass(frozen=True)
class _Handshake:
    """What a client's handshake would tell the rules (the check's options)."""

    servername: str | None = None
    protocol: str | None = None
    der: bytes | None = None
    cert_asked: bool = False
    given: bool = False  # an option described it: show the TLS stage


def _handshake(args: dict[str, object]) -> _Handshake:
    sni, alpn, cert = args["--sni"], args["--alpn"], args["--cert"]
    der = None
    if cert is not None:
        try:
            with open(str(cert), "rb") as f:
                data = f.read()
            der = ssl.PEM_cert_to_DER_cert(data.decode("ascii")) if b"-----BEGIN" in data else data
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not a PEM or DER certificate"
            raise Failed(f"unable to read certificate {cert}: {reason}") from None
    given = any(v is not None for v in (sni, alpn, cert)) or bool(args["--no-cert"])
    return _Handshake(
        None if sni is None else str(sni),
        None if alpn is None else str(alpn),
        der,
        cert is not None or bool(args["--no-cert"]),
        given,
    )


@dataclass(frozen=True)
class _Answer:
    """Both stages' decisions for one client."""

    ip: Explanation
    handshake: _Handshake
    tls: TlsDecision | None  # None when the IP stage denied

    @property
    def allowed(self) -> bool:
        return self.ip.allowed and (self.tls is None or self.tls.verdict is not None)

    @property
    def shows_tls(self) -> bool:
        return self.tls is not None and (self.handshake.given or any(self.tls.found))

    def rule(self) -> Rule | None:
        """One rule with the effect of every rule that allowed (None if denied)."""
        if not self.allowed or self.tls is None or self.tls.verdict is None:
            return None
        verdict = self.tls.verdict
        final: dict[str, str | None] = {}
        for name, value in verdict.env:
            final[name] = value
        return Rule(True, tuple(final.items()), verdict.exec)


def _answer(
    source: RuleSource, ip: str, name: str | None, names: bool, form: _Form, hs: _Handshake
) -> bool:
    """Print how ``source`` decides for one client, in ``form``; tell whether it is allowed."""
    try:
        explained = explain(source, ip, name if names else None)
        tls = None
        if explained.allowed:
            assert explained.key is not None and explained.rule is not None
            found = (explained.key, explained.rule)
            tls = decide_tls(source, found, hs.servername, hs.protocol, hs.der, hs.cert_asked)
    except ValueError:
        raise Failed(f"invalid IP address: {ip}", EXIT_USAGE) from None
    except RulesError as e:
        raise Failed(str(e)) from None
    answer = _Answer(explained, hs, tls)
    if form == "json":
        print(json.dumps(_as_json(answer), ensure_ascii=False))
    else:
        ignored = None if names else name
        sys.stdout.write(_as_text(answer, ignored, tried=form == "verbose"))
    sys.stdout.flush()
    return answer.allowed


def _as_json(answer: _Answer) -> dict[str, object]:
    fields: dict[str, object] = {
        "ip": answer.ip.ip,
        "name": answer.ip.name,
        "decision": "allow" if answer.allowed else "deny",
        "key": answer.ip.key,
        **changes(answer.rule()),
        "tried": list(answer.ip.tried),
    }
    if answer.shows_tls and answer.tls is not None:
        hs, tls = answer.handshake, answer.tls
        fields["tls"] = {
            "sni": hs.servername,
            "alpn": hs.protocol,
            "certificate": cert_hash(hs.der) if hs.der else None,
            "keys": [found[0] for found in tls.found if found],
            "denied_by": tls.denied_by,
            "tried": [key for keys in _tried(tls) for key in keys],
        }
    return fields


def _tried(tls: TlsDecision) -> list[tuple[str, ...]]:
    """Each lookup's keys, up to the one found."""
    return [
        keys[: keys.index(found[0]) + 1] if found else keys
        for keys, found in zip(tls.tried, tls.found, strict=True)
    ]


def _as_text(answer: _Answer, ignored_name: str | None, *, tried: bool) -> str:
    name = answer.ip.name or "no name"
    if ignored_name is not None:
        name = f"no name ({show(ignored_name)} ignored: -H)"
    lines = [f"client: {answer.ip.ip}, {name}"]
    hs, tls = answer.handshake, answer.tls if answer.shows_tls else None
    if tls is not None:
        lines.append(f"sni: {show(hs.servername) if hs.servername else 'none'}")
        lines.append(f"alpn: {show(hs.protocol) if hs.protocol else 'none'}")
        if hs.cert_asked:
            lines.append(f"certificate: {cert_hash(hs.der) if hs.der else 'none'}")
    key = answer.ip.key
    lines.append(f"decision: {'allow' if answer.allowed else 'deny'}")
    lines.append(f"key: {key}" if key else "key: none (no rule matches)")
    if tls is not None:
        for found in tls.found:
            if found:
                lines.append(f"key: {found[0]}" + ("" if found[1].allow else " (deny)"))
    rule = answer.rule()
    if rule is not None and rule.allow:
        for variable, value in variables(rule):
            if value is None:
                lines.append(f"unset: {variable}")
            else:
                lines.append(f"set: {variable}={show(value)}")
        if rule.exec:
            lines.append(f"exec: execlineb -c {show(rule.exec, quote=True)}")
    if tried:
        lines += [f"tried: {key}" for key in answer.ip.tried]
        if tls is not None:
            lines += [f"tried: {key}" for keys in _tried(tls) for key in keys]
    return "".join(f"{line}\n" for line in lines)

"""PII redaction (step ``pii``): ``PIIRedactor`` (formatter: <EMAIL> <IP> <PHONE> <SECRET>), extending datatrove's
PIIFormatter: same email regex and public-IP validator.
"""

from __future__ import annotations

import ipaddress
import re
from functools import partial
from typing import Callable

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer, public_ip_validator

from hfpipe.stages.data.steps.patterns import SECRET_PATTERNS

IPV4 = r"(?<![\w.])(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(?!\w|\.\d)"
IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
PHONE = (r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])(?:\d{2,4}[ .-]){1,3}\d{3,4}"
         r"(?![\w-]|\.\d)")
PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>", "secret": "<SECRET>"}
# Gates: regex -> a cheap test that is true of every text holding a match (a substring every match contains), so a
# text failing it is not scanned. A leading lookbehind, \b or character class makes re try the whole pattern at every
# position: PIIRedactor.redact over the starter corpus's prose and dialog (28.6 MB, one quiet core) took 4.0 s, 3.5 s
# of it in the email, IP and phone scans; gated, 1.0 s (most documents hold no '@', ':h:' or 'dd-ddd'). Same output by
# construction (tests/test_data_steps.py compares gated and ungated redaction).
_IPV4_GATE, _IPV6_GATE, _PHONE_GATE = (re.compile(r"\.\d{1,3}\.\d{1,3}\.\d"),  # o1.o2.o3.o4 holds ".o2.o3.d"
                                       re.compile(r":[0-9A-Fa-f]{0,4}:"),  # two of the (h{0,4}:){2,7} groups
                                       re.compile(r"\d\d[ .-]\d\d\d"))  # the last (d{2,4}[ .-]) then d{3,4}


def _aws_secret_gate(text: str) -> bool:
    return "aws_secret_access_key" in text or "AWS_SECRET_ACCESS_KEY" in text


def _email_gate(text: str) -> bool:  # datatrove's email regex: local part, '@', domain
    return "@" in text


PII_GATES: dict[str, Callable[[str], object]] = {
    IPV4: _IPV4_GATE.search, IPV6: _IPV6_GATE.search, PHONE: _PHONE_GATE.search,
    SECRET_PATTERNS["aws_secret_key"]: _aws_secret_gate,
}


def _ipv6_validator(s: str, public_only: bool) -> bool:
    return sum(bool(g) for g in s.split(":")) >= 2 and public_ip_validator(s, public_only)


def _phone_validator(s: str) -> bool:
    try:  # a dotted run of digits that is an IP address is not a phone number
        ipaddress.ip_address(s)
        return False
    except ValueError:
        return 10 <= sum(c.isdigit() for c in s) <= 15


class PIIRedactor(PIIFormatter):
    """Replace PII and credentials with placeholders and count each kind (``redacted_email``, ``redacted_ip``,
    ``redacted_phone``, ``redacted_secret``; ``docs_redacted``). Redacted documents get
    ``metadata["pii_redacted"] = {kind: count}``.

    Extends datatrove's ``PIIFormatter`` (its email regex and its public-IP validator) with IPv6, phone numbers and
    API keys/tokens (``SECRET_PATTERNS``: HF hf_, AWS AKIA, GitHub ghp_/github_pat_, ...).

    Args:
        emails, ips, phones, secrets: which kinds to redact.
        only_public_ips: keep private/reserved addresses (127.0.0.1, 192.168.x.x, 192.0.2.x, ::1) untouched, as
            datatrove does: they identify no one and are common in code and docs.
        placeholders: {kind: replacement}; default ``PLACEHOLDERS`` (<EMAIL>, <IP>, <PHONE>, <SECRET>).
    """

    name = "📞 PII redaction"

    def __init__(self, emails: bool = True, ips: bool = True, phones: bool = True, secrets: bool = True,
                 only_public_ips: bool = True, placeholders: dict[str, str] | None = None):
        self.placeholders = {**PLACEHOLDERS, **(placeholders or {})}
        super().__init__(remove_emails=emails, remove_ips=ips, only_remove_public_ips=only_public_ips,
                         email_replacement=self.placeholders["email"], ip_replacement=self.placeholders["ip"])
        ip_ok = partial(public_ip_validator, public_only=only_public_ips)
        self.replacers: list[tuple[str, PIIReplacer]] = []  # secrets first, emails before IPs, phones last
        if secrets:
            self.replacers += [("secret", PIIReplacer(rx, "")) for rx in SECRET_PATTERNS.values()]
        if emails:
            self.replacers.append(("email", self.emails_replacer))
        if ips:
            self.replacers += [("ip", PIIReplacer(IPV4, "", validator=ip_ok)),
                               ("ip", PIIReplacer(IPV6, "", validator=partial(_ipv6_validator,
                                                                              public_only=only_public_ips)))]
        if phones:
            self.replacers.append(("phone", PIIReplacer(PHONE, "", validator=_phone_validator)))
        self.gates = {**PII_GATES, self.emails_replacer.regex.pattern: _email_gate}

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """(redacted text, {kind: replacements})."""
        counts: dict[str, int] = {}
        for kind, replacer in self.replacers:
            gate = self.gates.get(replacer.regex.pattern)
            if gate is not None and not gate(text):
                continue
            def sub(m: re.Match, kind=kind, replacer=replacer) -> str:
                if replacer.validator and not replacer.validator(m.group(0)):
                    return m.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                keep = m.groupdict().get("prefix") or ""  # e.g. "aws_secret_access_key = '" stays readable
                return keep + self.placeholders[kind]

            text = replacer.regex.sub(sub, text)
        return text, counts

    def format(self, text: str) -> str:
        return self.redact(text)[0]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                doc.text, counts = self.redact(doc.text)
            if counts:
                doc.metadata["pii_redacted"] = counts
                self.stat_update("docs_redacted")
                for kind, n in counts.items():
                    self.stat_update(f"redacted_{kind}", value=n)
            yield doc

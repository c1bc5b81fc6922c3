"""PII detectors for ``guardrails.redact``: a regular expression to find candidates, then a
check that keeps false positives out (Luhn for card numbers, mod-97 for IBANs, digit counts
for phone numbers, the ``ipaddress`` parser for IPv6).

Every pattern is compiled once, at import. Matches are replaced by ``[REDACTED:<class>]``.
Classes run in a fixed order (:data:`ORDER`) so that the more specific shapes win: a card
number is gone before the phone detector could see part of it, an SSN before a phone, an IP
address before a dotted phone number. Placeholders contain no digits, ``@`` or ``:``, so no
later detector matches them.

The patterns avoid unbounded backtracking: starts are pinned by look-behinds (a candidate
never starts inside a longer run of its own characters), repetitions are bounded, and
numeric runs must be maximal (a digit group that goes on is not a match), which is also
what keeps plain long numbers, order ids and timestamps from being redacted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import get_args

from kanal.api.llmroute import RedactClass

PLACEHOLDER = "[REDACTED:{}]"
_DIGIT = re.compile(r"\d")
_SEPARATORS = frozenset(" .-/")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _only_digits(text: str) -> str:
    return "".join(c for c in text if "0" <= c <= "9")


def card_ok(candidate: str) -> bool:
    """13-19 digits of a plausible payment card: major-network first digit (2-6), Luhn."""
    digits = _only_digits(candidate)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def iban_ok(candidate: str) -> bool:
    """ISO 13616: 15-34 characters, country code, check digits, mod 97 == 1."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def phone_ok(candidate: str) -> bool:
    """International (+CC): 8-15 digits (E.164); national: 9-13 digits; balanced parens."""
    if candidate.count("(") != candidate.count(")"):
        return False
    digits = len(_only_digits(candidate))
    if candidate.startswith("+"):
        return 8 <= digits <= 15
    return 9 <= digits <= 13


def ipv6_ok(candidate: str) -> bool:
    if not any(c not in ":" for c in candidate):  # "::" alone says nothing
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}(?![\w-])"
)
IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"
)
CARD = re.compile(r"(?<![\w+-])(?<!\d[ -])(?:\d[ -]?){12,18}\d(?!\d|[ -]\d)")
SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\d|\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .\-/])"
    r"(?:"
    r"\+[1-9][\d .()\-]{5,22}\d"  # international: +CC then digits and single separators
    r"|(?:1[ .\-])?(?:\(\d{3}\) ?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"  # North American
    r"|\(?0\d{1,4}(?:\) ?|[ /\-])\d{2,8}(?:[ \-]\d{2,8}){0,3}"  # trunk 0: 030 1234567
    r")"
    r"(?![\w/]|[ .\-]?\d|:\d)"
)


@dataclass(frozen=True, slots=True)
class Detector:
    """One PII class's finder: candidates by regex, kept only if ``valid`` says so."""

    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    needs_digit: bool = True
    needs: str = ""
    """A character every match contains (a cheap pre-check)."""
    trim: bool = False
    """Also try shorter candidates, cut at separators (for loose shapes that may run on)."""

    @property
    def placeholder(self) -> str:
        return PLACEHOLDER.format(self.name)

    def applies(self, text: str, has_digit: bool) -> bool:
        return (has_digit or not self.needs_digit) and (not self.needs or self.needs in text)

    def redact(self, text: str) -> str:
        """``text`` with every valid match replaced (the same object when nothing matched)."""
        valid, placeholder = self.valid, self.placeholder

        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            if valid is None or valid(found):
                return placeholder
            if self.trim:
                for cut in range(len(found) - 1, 0, -1):
                    if found[cut] in _SEPARATORS:
                        head = found[:cut].rstrip(" .-/(")
                        if head and valid(head):
                            return placeholder + found[len(head) :]
            return found

        out = self.pattern.sub(replace, text)
        return text if out == text else out


ORDER: tuple[Detector, ...] = (
    Detector("email", EMAIL, needs_digit=False, needs="@"),
    Detector("iban", IBAN, iban_ok, trim=True),
    Detector("credit-card", CARD, card_ok),
    Detector("ssn", SSN),
    Detector("ip-address", IPV4, needs="."),
    Detector("ip-address", IPV6, ipv6_ok, needs_digit=False, needs=":"),
    Detector("phone", PHONE, phone_ok, trim=True),
)
"""Every detector, in the order they run."""

CLASSES: tuple[str, ...] = get_args(RedactClass)
"""The redact classes, in the API's order (``LlmRoute.guardrails.redact``): the order in
which ``x-kanal-redacted`` lists them."""
assert set(CLASSES) == {d.name for d in ORDER}, "a redact class without a detector"


def detectors_for(classes: Collection[str]) -> tuple[Detector, ...]:
    """The detectors of the given classes, in running order; unknown names are an error."""
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown redact classes: {sorted(unknown)}")
    wanted = set(classes)
    return tuple(d for d in ORDER if d.name in wanted)


def redact(text: str, detectors: tuple[Detector, ...], found: set[str]) -> str:
    """``text`` with PII of the detectors' classes replaced; adds matched classes to
    ``found``. Returns the same object when nothing was replaced."""
    has_digit = _DIGIT.search(text) is not None
    for detector in detectors:
        if not detector.applies(text, has_digit):
            continue
        out = detector.redact(text)
        if out is not text:
            found.add(detector.name)
            text = out
            has_digit = _DIGIT.search(text) is not None
    return text

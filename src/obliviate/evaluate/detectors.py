"""PII-like strings in free text, without knowing any true value: dates, SSN / national-ID shapes, phone numbers,
e-mail addresses and postal addresses.

``obliviate audit`` (:mod:`obliviate.evaluate.audit`) runs these over a model's answers when it is given names only.
Each detection carries the surface text and a canonical value in the form :func:`obliviate.data.pii_match.
normalize_value` compares in, so two answers that write the same value differently ("(721) 625-3765",
"7216253765") count as one value, and a value can be checked against a known one.

Maintained libraries do the judging where one fits: ``python-dateutil`` parses every date candidate,
``phonenumbers`` finds phone numbers and ``email-validator`` checks each e-mail candidate's syntax. When
``phonenumbers`` or ``email-validator`` is not installed, a regular-expression fallback takes its place (North
American numbers and ``+CC`` international numbers; an RFC-5322-like address with an alphabetic top-level domain);
:data:`BACKENDS` says which one ran, and the audit records it.

Overlaps are settled by priority (e-mail, date, address, SSN, phone): a span inside a longer claim of a higher kind
is not reported again ("1984-12-31" is a date, not a phone number; the ZIP code inside an address is no SSN).
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dateutil import parser as date_parser
from faker.providers.address.en_US import Provider as _AddressProvider

from obliviate.data.pii_match import normalize_value

try:  # pragma: no cover - which branch runs depends on the environment
    import phonenumbers
except ImportError:  # pragma: no cover
    phonenumbers = None
try:  # pragma: no cover
    import email_validator
except ImportError:  # pragma: no cover
    email_validator = None

BACKENDS = {
    "birth_date": "python-dateutil",
    "ssn": "regex (SSN, SIN and NINo shapes)",
    "phone": "phonenumbers" if phonenumbers else "regex fallback (phonenumbers not installed)",
    "email": "email-validator" if email_validator else "regex fallback (email-validator not installed)",
    "address": "regex over Faker's street suffixes",
}
"""What decides each field: a library, or the fallback that ran because it is not installed."""

ORDER = ("email", "birth_date", "address", "ssn", "phone")
"""Priority when spans overlap: a longer, more specific claim first."""


@dataclass(frozen=True)
class Detection:
    """One PII-like string: its field, where it is, how it is written, and its canonical value."""

    field: str
    start: int
    end: int
    surface: str
    value: str


# ---- dates ----------------------------------------------------------------------------------------------------
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?" \
         r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"  # fmt: skip
_ORD = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE_PATTERNS = (
    (re.compile(r"(?<![\d-])\d{4}([-/.])\d{1,2}\1\d{1,2}(?![\d-])"), True),  # 1984-12-31
    (re.compile(r"(?<![\d/.-])\d{1,2}([-/.])\d{1,2}\1\d{4}(?![\d/-]|\.\d)"), False),  # 12/31/1984
    (re.compile(r"(?<![\d/.-])\d{1,2}/\d{1,2}/\d{2}(?![\d/-]|\.\d)"), False),  # 12/31/84
    (re.compile(rf"\b{_MONTH}\s+{_ORD},?\s+\d{{4}}(?!\d)", re.IGNORECASE), False),  # December 31, 1984
    (re.compile(rf"(?<!\d){_ORD}\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}(?!\d)", re.IGNORECASE), False),  # 31st of Dec 1984
)
_YEARS = (1900, 2100)


def _dates(text: str, dayfirst: bool) -> Iterator[Detection]:
    for pattern, yearfirst in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            try:
                parsed = date_parser.parse(match[0], yearfirst=yearfirst, dayfirst=dayfirst and not yearfirst)
            except (ValueError, OverflowError):  # "February 30", "13/45/1984"
                continue
            if _YEARS[0] <= parsed.year <= _YEARS[1]:
                day = datetime.date(parsed.year, parsed.month, parsed.day)
                yield Detection("birth_date", match.start(), match.end(), match[0], day.isoformat())


def _filler(digits: str) -> bool:
    """A run of one or two repeated digits ("1999999999"): what a model writes when it knows no value."""
    return len(set(digits)) <= 2


# ---- SSN and national-ID shapes -------------------------------------------------------------------------------
_SSN_PATTERNS = (
    re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])"),  # US SSN, 123-45-6789 / 123 45 6789
    re.compile(r"(?<![\d-])(\d{3})(\d{2})(\d{4})(?![\d-])"),  # bare nine digits (US SSN, Canadian SIN)
    re.compile(r"(?<![\d-])(\d{3})([- ])(\d{3})\2(\d{3})(?![\d-])"),  # Canadian SIN, 123-456-789
)
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")  # UK National Insurance


def _ssns(text: str) -> Iterator[Detection]:
    for pattern in _SSN_PATTERNS:
        for match in pattern.finditer(text):
            digits = re.sub(r"\D", "", match[0])
            if digits[:3] == "000" or _filler(digits):  # never issued; "111111111" is filler
                continue
            yield Detection("ssn", match.start(), match.end(), match[0], normalize_value("ssn", match[0]))
    for match in _NINO.finditer(text):
        yield Detection("ssn", match.start(), match.end(), match[0], re.sub(r"\s", "", match[0]).lower())


# ---- phone numbers --------------------------------------------------------------------------------------------
_NANP = re.compile(
    r"(?<![\w+])(?:(?:\+1|001|1)[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}"
    r"(?:\s*(?:x|ext\.?)\s*\d{1,6})?(?![\d-])",
    re.IGNORECASE,
)
_INTERNATIONAL = re.compile(r"(?<![\w+])\+(?!1\b)\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,5}(?![\d-])")
_DIALLING_PREFIX = re.compile(r"(?<!\d)001([\s.-])")  # "001-721-…": the US exit code then country code 1


def _phones(text: str, region: str) -> Iterator[Detection]:
    if phonenumbers is not None:
        yield from _phones_library(text, region)
        return
    for pattern in (_NANP, _INTERNATIONAL):  # pragma: no cover - the fallback, when phonenumbers is absent
        for match in pattern.finditer(text):
            digits = re.sub(r"\D", "", re.sub(r"(?i)(x|ext\.?)\s*\d+$", "", match[0]))
            if _filler(digits) or (pattern is _INTERNATIONAL and not 8 <= len(digits) <= 15):
                continue
            yield Detection("phone", match.start(), match.end(), match[0], normalize_value("phone", match[0]))


def _phones_library(text: str, region: str) -> Iterator[Detection]:
    # phonenumbers reads "001-…" as a local number; " +1-" has the same length, so spans stay in place
    scanned = _DIALLING_PREFIX.sub(lambda m: " +1" + m[1], text)
    for match in phonenumbers.PhoneNumberMatcher(scanned, region, leniency=phonenumbers.Leniency.POSSIBLE):
        number = match.number
        national = str(number.national_number)
        if number.country_code == 1 and len(national) != 10:  # a 7-digit local number: too weak to call a phone
            continue
        if _filler(national) or (number.country_code != 1 and not phonenumbers.is_possible_number(number)):
            continue
        start, end = match.start, match.end
        if scanned[start : start + 2] == "+1" and text[start - 1 : start + 2] == "001":
            start -= 1
        if text[start:end].strip() != text[start:end]:
            start += len(text[start:end]) - len(text[start:end].lstrip())
        canonical = national if number.country_code == 1 else f"{number.country_code}{national}"
        yield Detection("phone", start, end, text[start:end], canonical)


# ---- e-mail ---------------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"[\w.+%'\\-]+@[\w\\-]+(?:\\?\.[\w\\-]+)+")
_EMAIL_FALLBACK = re.compile(r"[\w.+%'-]{1,64}@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}")


def _emails(text: str) -> Iterator[Detection]:
    for match in _EMAIL.finditer(text):
        candidate = match[0].replace("\\", "").strip(".")
        if email_validator is not None:
            try:
                email_validator.validate_email(candidate, check_deliverability=False)
            except email_validator.EmailNotValidError:
                continue
        elif not _EMAIL_FALLBACK.fullmatch(candidate):  # pragma: no cover - fallback when the library is absent
            continue
        end = match.start() + len(match[0].rstrip("."))
        yield Detection("email", match.start(), end, text[match.start() : end], normalize_value("email", candidate))


# ---- postal addresses -----------------------------------------------------------------------------------------
_ABBREVIATIONS = ("St", "Ave", "Rd", "Dr", "Blvd", "Ln", "Ct", "Pl", "Ter", "Pkwy", "Hwy", "Cir", "Sq", "Trl", "Pike")
_FULL = ("Street", "Avenue", "Road", "Drive", "Boulevard", "Lane", "Court", "Place", "Terrace", "Parkway", "Highway")
_SUFFIXES = sorted({*_AddressProvider.street_suffixes, *_ABBREVIATIONS, *_FULL}, key=len, reverse=True)
_WORD = r"[A-Z0-9][\w'.-]*"
_DIRECTION = r"(?:\s+(?:North|South|East|West|Northeast|Northwest|Southeast|Southwest|N|S|E|W|NE|NW|SE|SW)\b\.?)?"
# greedy words, so that "1810 Orchard Place" ends at Place, though "Orchard" is a suffix too
_ROUTE = r"(?:\s+[A-Z]*\d[A-Z0-9]*\b)?"  # "Highway A1A", "Route 66"
_STREET = rf"\b\d{{1,6}}(?:\s+{_WORD}){{0,4}}\s+(?:{'|'.join(_SUFFIXES)})\b\.?{_ROUTE}{_DIRECTION}"
_UNIT = r"(?:,?\s*(?:(?i:apt|suite|unit|ste)\.?|#)\s*#?[\w-]+(?:\s+[A-Z]?\d[\w-]*)?|,\s*[A-Z0-9]{1,4}(?=,))?"
_PLACE = r"(?:,\s*[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*){0,3})?(?:,?\s*[A-Z]{2})?,?\s*\d{5}(?:-\d{4})?"
_ADDRESS = re.compile(rf"{_STREET}{_UNIT}(?:{_PLACE})?")
_TOWN = re.compile(r"\b[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*){0,3},\s*[A-Z]{2},?\s*\d{5}(?:-\d{4})?(?!\d)")


def _addresses(text: str) -> Iterator[Detection]:
    for pattern in (_ADDRESS, _TOWN):  # a street line (with its town and ZIP when given), else "Town, ST 12345"
        for match in pattern.finditer(text):
            yield Detection("address", match.start(), match.end(), match[0], normalize_value("address", match[0]))


def detect(text: str, region: str = "US") -> list[Detection]:
    """Every PII-like string in ``text``, by position; overlaps settled by :data:`ORDER` (the first kind wins).

    ``region`` is the phone numbering plan numbers without a ``+`` country code are read in (ISO 3166 code), and
    says whether an ambiguous numeric date is read day first (every region but the US).
    """
    found: dict[str, list[Detection]] = {
        "email": list(_emails(text)),
        "birth_date": list(_dates(text, dayfirst=region.upper() != "US")),
        "address": list(_addresses(text)),
        "ssn": list(_ssns(text)),
        "phone": list(_phones(text, region.upper())),
    }
    kept: list[Detection] = []
    for field in ORDER:
        for item in sorted(found[field], key=lambda d: (d.start, -d.end)):
            if all(item.end <= other.start or item.start >= other.end for other in kept):
                kept.append(item)
    return sorted(kept, key=lambda d: d.start)


def counts(texts: Iterable[str], region: str = "US") -> dict[str, int]:
    """How many PII-like strings of each field :func:`detect` finds over ``texts`` (counts only, never a value, so
    the result can be printed): ``obliviate inspect``'s PII-looking counts."""
    found = Counter(item.field for text in texts for item in detect(text, region))
    return {field: found[field] for field in ("ssn", "phone", "email", "birth_date", "address")}

"""Finding PII values in text: normalised matching of dates, SSNs, phones, e-mails, addresses and names.

The data layer's one definition of "this text holds that value" (``docs/METRICS.md``, "PII leak rate"), used by the
leak probes and redaction (:mod:`obliviate.evaluate.leak`), by the fakes that must never equal a real value
(:mod:`obliviate.data.fakes`) and by relabelling (:mod:`obliviate.train.relabel`).

Matching never builds one regex per value: a few fixed patterns find every candidate (digit runs, written dates,
e-mail addresses, word tokens) and a dict lookup decides whether it is a known value, so one index over hundreds of
people costs about as much per text as a single value.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from typing import NamedTuple

# A number may contain up to 3 separator characters between its digit groups ("(721) 625-3765", "900 - 51").
_DIGIT_CHAIN = re.compile(r"\d+(?:[\s\-./()]{1,3}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
_MAX_DIGITS = 13  # the longest key: a phone number with a "001" country prefix
_MONTH = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?"
)
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_WRITTEN_DATES = (  # "December 31, 1984", "Dec. 31 1984", "31 December 1984", "31st of Dec, 1984"
    re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+(?P<year>\d{{4}})(?!\d)", re.IGNORECASE),
    re.compile(rf"(?<!\d){_DAY}\s+(?:of\s+)?{_MONTH},?\s+(?P<year>\d{{4}})(?!\d)", re.IGNORECASE),
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# Backslashes are markdown escapes ("tiffi\_magenta@me.com"); a sentence's final period is not captured.
_EMAIL = re.compile(r"[\w.+%\\-]+@[\w\\-]+(?:\\?\.[\w\\-]+)+")
_TOKEN = re.compile(r"[^\W_]+")
_NAME_AFFIXES = {"mr", "mrs", "ms", "miss", "dr", "prof", "jr", "sr", "ii", "iii", "iv", "md", "phd", "dds", "dvm"}


class _Span(NamedTuple):
    start: int
    end: int
    field: str


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _national_phone(value: str) -> str:
    """Phone digits without an extension ("x123") and without a North-American "1" / "001" country prefix."""
    digits = _digits(re.sub(r"(?i)\s*(?:x|ext\.?|extension)\s*\d+\s*$", "", value))
    for prefix in ("001", "1"):
        if len(digits) == 10 + len(prefix) and digits.startswith(prefix):
            return digits[len(prefix) :]
    return digits


def _written_dates(text: str) -> Iterator[tuple[int, int, date]]:
    for pattern in _WRITTEN_DATES:
        for match in pattern.finditer(text):
            month = _MONTHS.index(match["month"][:3].lower()) + 1
            try:
                yield match.start(), match.end(), date(int(match["year"]), month, int(match["day"]))
            except ValueError:  # "February 30"
                continue


def _parse_date(value: str) -> date | None:
    """An ISO ("1984-12-31", "19841231"), numeric ("12/31/1984", month first where that reads, else day first:
    "31/12/1984") or written ("December 31, 1984") date, else None."""
    readings = date_readings(value)
    return readings[0] if readings else None


def date_readings(value: str) -> list[date]:
    """Every date ``value`` can be read as: a numeric day and month both up to 12 ("03/08/1988") is the 8th of March
    as the US writes it and the 3rd of August as most of the world does; the month-first reading comes first."""
    return [found for found, _ in _readings(value)]


def _readings(value: str) -> list[tuple[date, bool]]:
    """:func:`date_readings`, each with whether it reads ``value`` day first (a day-first reading that equals the
    month-first one, "05/05/1988", is the month-first one)."""
    value = value.strip()
    if match := re.fullmatch(r"(\d{4})\D?(\d{1,2})\D?(\d{1,2})", value):
        return [(found, False) for found in _valid((int(match[1]), int(match[2]), int(match[3])))]
    if match := re.fullmatch(r"(\d{1,2})\D(\d{1,2})\D(\d{4})", value):
        first, second, year = int(match[1]), int(match[2]), int(match[3])
        month_first = [(found, False) for found in _valid((year, first, second))]
        day_first = [(found, True) for found in _valid((year, second, first)) if first != second]
        return month_first + day_first
    return [(found, False) for _, _, found in _written_dates(value)][:1]


def _valid(parts: tuple[int, int, int]) -> list[date]:
    try:
        return [date(*parts)]
    except ValueError:
        return []


def _tokens(value: str) -> tuple[str, ...]:
    return tuple(token.lower() for token in _TOKEN.findall(value))


def normalize_value(field: str, value: str) -> str:
    """The canonical form values of ``field`` are compared in.

    ``ssn``: digits; ``phone``: digits without extension or "1"/"001" prefix; ``birth_date``: ISO date (digits when
    unparseable); ``email``: lower case without markdown backslashes or a final period; anything else (address,
    name): lower-case alphanumeric words joined by single spaces (whitespace and punctuation collapsed).
    """
    if field == "ssn":
        return _digits(value)
    if field == "phone":
        return _national_phone(value)
    if field == "birth_date":
        parsed = _parse_date(value)
        return parsed.isoformat() if parsed else _digits(value)
    if field == "email":
        return value.strip().replace("\\", "").lower().rstrip(".")
    return " ".join(_tokens(value))


class _Index:
    """Known values by canonical key, and the scan that finds them in a text."""

    def __init__(self) -> None:
        self.digits: dict[str, str] = {}
        self.dates: dict[date, str] = {}
        self.day_first_dates: set[date] = set()  # known from a value written day first ("24/08/1988")
        self.month_first_dates: set[date] = set()  # the others (ISO, US order, written out)
        self.emails: dict[str, str] = {}
        self.sequences: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        self.name_parts: set[str] = set()

    def add(self, field: str, value: str) -> None:
        canonical = normalize_value(field, value)
        if not canonical:
            return
        if field == "ssn":
            self.digits[canonical] = field
        elif field == "phone":
            variants = ("", "1", "001") if len(canonical) == 10 else ("",)
            self.digits.update({prefix + canonical: field for prefix in variants})
        elif field == "birth_date":
            readings = _readings(value)
            if not readings:  # not a date we can read: compare its digits like an SSN
                self.digits[canonical] = field
                return
            for parsed, day_first in readings:  # "03/08/1988": the 8th of March and the 3rd of August
                self.dates[parsed] = field
                (self.day_first_dates if day_first else self.month_first_dates).add(parsed)
                for form in ("%Y%m%d", "%d%m%Y" if day_first else "%m%d%Y"):
                    self.digits[parsed.strftime(form)] = field
        elif field == "email":
            self.emails[canonical] = field
        else:
            tokens = tuple(canonical.split())
            self.sequences[tokens[0]].append((tokens, field))

    def add_name(self, name: str) -> None:
        """The full name (any case) and each part of it as written (case-sensitive, titles and suffixes skipped)."""
        if _tokens(name):
            self.add("name", name)
        self.name_parts.update(p for p in _TOKEN.findall(name) if len(p) > 1 and p.lower() not in _NAME_AFFIXES)

    def spans(self, text: str) -> list[_Span]:
        found: list[_Span] = []
        if self.digits or self.dates:
            found += self._number_spans(text)
        if self.dates:
            found += [_Span(s, e, self.dates[d]) for s, e, d in _written_dates(text) if d in self.dates]
        if self.emails:
            for match in _EMAIL.finditer(text):
                key = match.group().replace("\\", "").lower()
                if key in self.emails:
                    found.append(_Span(match.start(), match.end(), self.emails[key]))
        if self.sequences or self.name_parts:
            found += self._token_spans(text)
        return found

    def _number_spans(self, text: str, whole: bool = True) -> Iterator[_Span]:
        """Unions of whole digit groups, not glued to more digits by a tight separator ("-", ".", "/"); with
        ``whole=False``, glued ones too (known digit values only, no dates)."""
        for chain in _DIGIT_CHAIN.finditer(text):
            groups = [(chain.start() + g.start(), chain.start() + g.end()) for g in _DIGIT_GROUP.finditer(chain[0])]
            tight = [False] + [
                whole and set(text[groups[i - 1][1] : groups[i][0]]) <= set("-./") for i in range(1, len(groups))
            ]
            tight.append(False)
            for first in range(len(groups)):
                if tight[first]:
                    continue
                parts: list[str] = []
                for last in range(first, len(groups)):
                    parts.append(text[groups[last][0] : groups[last][1]])
                    if sum(map(len, parts)) > _MAX_DIGITS:
                        break
                    if tight[last + 1]:
                        continue
                    field = self.digits.get("".join(parts)) or (self._numeric_date(parts) if whole else None)
                    if field:
                        yield _Span(groups[first][0], groups[last][1], field)

    def glued_number_spans(self, text: str) -> Iterator[_Span]:
        """Like the number spans, but also where the digits run on into more digits ("717646989-09-09"): every run of
        whole digit groups whose digits are a known value, and a known value of 7 or more digits inside a longer group
        ("3472593824717646989"). Too loose to count a leak, right for redacting one."""
        lengths = sorted({len(key) for key in self.digits if len(key) >= 7})
        for group in _DIGIT_GROUP.finditer(text):
            digits = group.group()
            for length in (n for n in lengths if n < len(digits)):
                for start in range(len(digits) - length + 1):
                    if field := self.digits.get(digits[start : start + length]):
                        yield _Span(group.start() + start, group.start() + start + length, field)
        yield from self._number_spans(text, whole=False)

    def _numeric_date(self, parts: list[str]) -> str | None:
        """The date written year first ("1984-12-31") or in US order ("12/31/1984", "1/5/1984"), if known; day first
        ("24/8/1988") too where the known value was written day first."""
        if not self.dates or len(parts) != 3:
            return None
        if len(parts[0]) == 4:
            return self._known(parts[0], parts[1], parts[2], self.dates)
        if len(parts[2]) != 4:
            return None
        return self._known(parts[2], parts[0], parts[1], self.month_first_dates) or self._known(
            parts[2], parts[1], parts[0], self.day_first_dates
        )

    def _known(self, year: str, month: str, day: str, known) -> str | None:
        try:
            found = date(int(year), int(month), int(day))
        except ValueError:
            return None
        return self.dates[found] if found in known else None

    def _token_spans(self, text: str) -> Iterator[_Span]:
        tokens = list(_TOKEN.finditer(text))
        lowered = [token[0].lower() for token in tokens]
        for i, token in enumerate(tokens):
            if token[0] in self.name_parts:
                yield _Span(token.start(), token.end(), "name")
            for sequence, field in self.sequences.get(lowered[i], ()):
                if tuple(lowered[i : i + len(sequence)]) == sequence:
                    yield _Span(token.start(), tokens[i + len(sequence) - 1].end(), field)


@functools.lru_cache(maxsize=4096)
def _single_value_index(field: str, value: str) -> _Index:
    index = _Index()
    index.add(field, value)
    return index


def find_value(field: str, value: str, text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the first occurrence of ``value`` in ``text`` in any accepted surface form, or None.

    Digit fields (ssn, phone, birth_date) match on digits with separators (``- . / ( )``, spaces) removed inside a
    number, but only whole numbers: one digit off, or a longer digit run ("9005143445", "900-51-4344-5"), does not
    match. Birth dates also match "December 31, 1984", "Dec 31, 1984", "31 December 1984" and "12/31/1984". E-mail
    is case-insensitive, ignores markdown backslashes and a final period. Addresses and names must appear as the
    same words in the same order, ignoring case, whitespace and punctuation.
    """
    found = _single_value_index(field, value).spans(text)
    return min(found)[:2] if found else None


def contains_value(field: str, value: str, text: str) -> bool:
    """Whether ``text`` contains ``value`` of ``field`` in any accepted surface form (see :func:`find_value`)."""
    return find_value(field, value, text) is not None

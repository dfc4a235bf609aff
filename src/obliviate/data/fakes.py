"""Fake PII values that look like the data: exposure candidates (and, later, relabelling replacements).

A fake keeps the format of the value it stands in for. Known fields are drawn with Faker, shaped like the data's
own values: SSN and phone digits poured into the value's separators, dates in the value's date format and inside
the data's range of dates, e-mails built like the data's (the person's name when the data derives the local part
from it, the data's joiners, digit suffixes and domains), addresses part by part (street, city, state, ZIP) and
never military ones; an address of another layout (a British one: ``Flat 4, Cole Plaza, Sheilaborough, M7B 5YJ``)
is put together from the parts the data's addresses of its layout hold at each position, digits redrawn (a
two-part one, ``Lindenweg 12/3, 04109 Leipzig``: a street of one, a place of another). Any other
value gets a format-preserving draw: every digit, upper-case and lower-case letter redrawn in its class, every
other character kept (``AB 12 34 56 C`` → ``KP 81 02 46 D``). Where the data holds enough values of that format,
the value is cut into pieces (digit groups of up to three, runs of letters) and each piece is drawn from the pieces
the data's values (its split's, where it has enough) have at that position (British National Insurance numbers end
in A–D, and a model trained on them finds an ``E`` there a tell); positions where every value agrees (LUME's SSNs all
start with ``900``) are kept as the data has them.

A fake never equals the value nor any real value of the data set (compared after
:func:`~obliviate.data.pii_match.normalize_value`).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable

from faker import Faker

from obliviate.data.pii_match import date_readings, normalize_value
from obliviate.data.records import PersonPII

MIN_AGREEING_VALUES = 5
"""A character position counts as fixed by the data only when at least this many values of a format share it."""
_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y")
_POURED_FIELDS = ("ssn", "phone")
_CLASS_OF = {
    **dict.fromkeys(string.digits, "9"),
    **dict.fromkeys(string.ascii_uppercase, "A"),
    **dict.fromkeys(string.ascii_lowercase, "a"),
}


def skeleton(value: str) -> str:
    """The character classes of ``value``: digits → ``9``, upper → ``A``, lower → ``a``, others kept."""
    return "".join(_CLASS_OF.get(c, c) for c in value)


def format_preserving(value: str, rng: random.Random) -> str:
    """A random value of the same format: each ASCII digit / upper / lower letter redrawn in its class.

    Raises:
        ValueError: ``value`` has no ASCII letter or digit, so no other value has its format.
    """
    pools = {"9": string.digits, "A": string.ascii_uppercase, "a": string.ascii_lowercase}
    shape = skeleton(value)
    if not any(c in pools for c in shape):
        raise ValueError(f"format-preserving draw: expected an ASCII letter or digit to vary, found none in {shape!r}")
    while True:
        fake = "".join(rng.choice(pools[s]) if s in pools else c for s, c in zip(shape, value))
        if fake != value:
            return fake


def pour(template: str, digits: str) -> str:
    """``digits`` written into the digit slots of ``template`` in order (``123-45-6789`` + ``987654321``)."""
    it = iter(digits)
    return "".join(next(it) if c in string.digits else c for c in template)


def parse_date(value: str, day_first: bool = False) -> tuple[datetime.date, str] | None:
    """The date and its ``strftime`` format, for the date formats the data uses; None otherwise. A numeric date is
    read month first (``03/08/1988``: the 8th of March) unless ``day_first``, or unless only day first reads it
    (``24/08/1988``)."""
    numeric = ("%d/%m/%Y", "%m/%d/%Y") if day_first else ("%m/%d/%Y", "%d/%m/%Y")
    for fmt in (fmt for known in _DATE_FORMATS for fmt in (numeric if known == "%m/%d/%Y" else (known,))):
        try:
            return datetime.datetime.strptime(value.strip(), fmt).date(), fmt
        except ValueError:
            continue
    return None


def _only_reading(value: str) -> str | None:
    """``"day"`` for a numeric date that reads only day first (``24/08/1988``), ``"month"`` for one that reads only
    month first (``08/24/1988``), None otherwise."""
    if not re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", value.strip()):
        return None
    month_first, day_first = parse_date(value), parse_date(value, day_first=True)
    if month_first and day_first and month_first[1] == day_first[1]:  # one format read it both times
        return "day" if month_first[1] == "%d/%m/%Y" else "month"
    return None


def render_date(date: datetime.date, fmt: str) -> str:
    """``date`` in ``fmt``, with the day unpadded in written forms (``March 4, 1987``) as the data writes it."""
    text = date.strftime(fmt)
    if "%B" in fmt or "%b" in fmt:
        text = re.sub(r"\b0(\d)\b", r"\1", text)
    return text


def render_like(field: str, fake: str, value: str, surface: str) -> str | None:
    """``fake`` (in ``value``'s form) written the way ``surface`` writes ``value``; None when it cannot be.

    ``surface`` is how a prompt's text writes the value (a biography writes ``123456789`` as ``123-45-6789`` and
    ``1987-03-04`` as ``March 4, 1987``).
    """
    if surface == value:
        return fake
    day_first = False
    if field == "birth_date" and (shared := set(date_readings(surface)) & set(date_readings(value))):
        # read month first, value and prose must give the date they share; where one does not ("03/08/1988" written
        # "3 August 1988", or "1988-08-03" written "03/08/1988"), the numeric one is day first, and so is its fake
        value_read, surface_read = parse_date(value), parse_date(surface)
        day_first = not (value_read and surface_read and value_read[0] in shared and surface_read[0] in shared)
    elif normalize_value(field, surface) != normalize_value(field, value):
        return None
    if surface.rstrip(".") == value.rstrip("."):  # the same text, its closing full stop the sentence's or not
        return fake.rstrip(".") + ("." if surface.endswith(".") else "")
    if "\\" in surface and surface.replace("\\", "") == value:  # markdown escapes (first\_last@me.com)
        escaped = "".join(sorted(set(re.findall(r"\\(.)", surface))))
        return re.sub(f"([{re.escape(escaped)}])", r"\\\1", fake) if escaped else fake
    if field == "address":  # pouring digits would keep the true street and place around them
        return fake if surface.lower() == value.lower() else None
    fake_date, value_date, surface_date = (parse_date(v, day_first) for v in (fake, value, surface))
    if fake_date and value_date and surface_date:
        return render_date(fake_date[0], surface_date[1])
    if field == "birth_date" and fake_date and value_date:  # a form not read ("4th of March, 1987"): pouring the
        return render_date(fake_date[0], "%B %d, %Y")  # fake's digits into it would keep the true month
    digits, surface_digits = re.sub(r"\D", "", fake), re.sub(r"\D", "", surface)
    all_digits = field != "birth_date" and not re.sub(r"[\W_\d]", "", value)  # letters or a month would stay true
    if all_digits and digits and len(digits) == len(surface_digits) == len(re.sub(r"\D", "", value)):
        return pour(surface, digits)
    return fake if surface.lower() == value.lower() else None


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _email_style(email: str) -> tuple[str, int, str]:
    """``(joiner, digit-suffix length, domain)``: ``john.smith12@gmail.com`` → ``(".", 2, "gmail.com")``."""
    local, _, domain = email.rpartition("@")
    joiner = next((c for c in local.rstrip(string.digits) if not c.isalnum()), "")
    return joiner, len(local) - len(local.rstrip(string.digits)), domain.lower()


class CandidateSampler:
    """Draws fakes of each person's PII values, seeded per (seed, person, field): the same draws every evaluation.

    Args:
        people: every person of the data set (all splits): their values are never returned, and the data's
            formats (date range, e-mail styles, fixed character positions) are learned from them.
        seed: varies the draws.
        locale: Faker's locale for names, streets and cities.
        address_split: where an address fake's street and place, and the pieces of a value of no known field, come
            from. None (evaluation, the stop rule): the value's own split, as :meth:`_address_from_data` says. A
            split name (training: ``"retain"``): that split's only, else Faker's or the format-preserving draw;
            never another split's. A fake a model is *trained* on must not
            be built from the forget people's streets and places: contrast's fakes drew them from the forget split,
            so every step that made a fake likelier taught the model other forget people's streets again.
    """

    def __init__(
        self, people: Iterable[PersonPII], seed: int = 0, locale: str = "en_US", address_split: str | None = None
    ) -> None:
        self.seed = seed
        self.address_split = address_split
        self.faker = Faker(locale)
        values: dict[str, list[str]] = defaultdict(list)
        addresses: dict[str, list[str]] = defaultdict(list)
        split_values: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for person in people:
            for field, value in person.fields.items():
                values[field].append(value)
                split_values[person.split][field].append(value)
            if "address" in person.fields:
                addresses[person.split].append(person.fields["address"])
        self.real = {field: {normalize_value(field, v) for v in found} for field, found in values.items()}
        # numeric dates that read one way only decide how the data writes them: day first (British data) where
        # more of them read only day first than only month first
        only = Counter(_only_reading(v) for v in values.get("birth_date", ()))
        self.day_first = only["day"] > only["month"]
        dates = sorted(d[0] for v in values.get("birth_date", ()) if (d := parse_date(v, self.day_first)))
        self.date_range = (dates[0], dates[-1]) if len(dates) >= MIN_AGREEING_VALUES else None
        self.email_styles = sorted(_email_style(v) for v in values.get("email", ()) if "@" in v)  # with frequencies
        self.fixed = {field: _fixed_positions(found) for field, found in values.items()}
        self.pieces = {field: _position_pieces(found) for field, found in values.items()}
        self.split_pieces = {
            split: {field: _position_pieces(found) for field, found in fields.items()}
            for split, fields in split_values.items()
        }
        self.address_parts = _address_parts(values.get("address", ()))
        self.split_address_parts = {split: _address_parts(found) for split, found in addresses.items()}
        self.address_layouts = _layout_parts(values.get("address", ()))
        self.split_address_layouts = {split: _layout_parts(found) for split, found in addresses.items()}
        self._drawn: dict[tuple[str, str, int, bool], list[str]] = {}  # deterministic: reused across epochs
        self._widened: set[tuple[str, str]] = set()  # (person, field) whose draws left the data's own format

    def candidates(self, person: PersonPII, field: str, k: int, own: bool = False) -> list[str]:
        """``k`` fakes of ``person.fields[field]`` (drawn with replacement), none equal to a real value.

        Draws look like the data first; when that space is exhausted (an e-mail fully given by the name) they
        widen to Faker's defaults, then to the format-preserving draw. With ``own``, ``person`` is made up (a
        stranger, its value built from its own name as the data builds them), and that value may be drawn too: on
        LUME, whose e-mails are all ``first_last@me.com``, it is the only draw in the data's format.
        """
        key = (person.person_id, field, k, own)
        if key not in self._drawn:
            self._drawn[key] = self._candidates(person, field, k, own)
        return list(self._drawn[key])

    def _candidates(self, person: PersonPII, field: str, k: int, own: bool = False) -> list[str]:
        value = person.fields[field]
        rng = random.Random(_seed(self.seed, person.person_id, field))
        self.faker.seed_instance(_seed(self.seed, person.person_id, field, "faker"))
        taken = self.real.get(field, set()) | (set() if own else {normalize_value(field, value)})
        out: list[str] = []
        for attempt in range(60 * k):
            mode = "data" if attempt < 20 * k else "wide" if attempt < 40 * k else "format"
            try:
                fake = self._draw(field, value, person, rng, mode)
            except ValueError:  # nothing to vary (a value of no letter or digit): no fake of its format exists
                break
            if normalize_value(field, fake) not in taken:
                out.append(fake)
                if mode != "data":
                    self._widened.add((person.person_id, field))
                if len(out) == k:
                    break
        return out

    def guessable(self, person: PersonPII, field: str, k: int) -> bool:
        """Whether the data's own format left no room for ``k`` fakes of this value, so that some had to be drawn in
        other formats: the value is (nearly) given by what the prompt already holds, as LUME's e-mails
        (``first_last@me.com``) are by the name. Such a value outranks its fakes for anyone, seen or not."""
        self.candidates(person, field, k)
        return (person.person_id, field) in self._widened

    def _draw(self, field: str, value: str, person: PersonPII, rng: random.Random, mode: str) -> str:
        if mode != "format":
            if field in _POURED_FIELDS and (digits := self._digits(field, value)):
                return self._keep_fixed(field, pour(value, digits))
            if field == "birth_date" and (parsed := parse_date(value, self.day_first)):
                return render_date(self._date(parsed[0], rng), parsed[1])
            if field == "email" and "@" in value:
                return self._email(value, person.name, rng, wide=mode == "wide")
            if field == "address":
                drawn = self._address_from_data(value, rng, person.split) if mode == "data" else None
                return drawn if drawn is not None else self._address(value, rng)
            if mode == "data" and (columns := self._pieces(field, value, person.split)):
                return "".join(rng.choice(column) for column in columns)
        return self._keep_fixed(field, format_preserving(value, rng))

    def _pieces(self, field: str, value: str, split: str) -> list[list[str]] | None:
        """The pieces :func:`_position_pieces` found at each position of ``value``'s format, in the value's own
        split (or ``address_split``'s) where it has enough values of that format, else in every split's (never for
        ``address_split``: a fake trained on is not built from another split's values); None where too few, or
        where they make fewer than :data:`PIECE_ROOM` combinations per value of the format.

        The split matters as it does for addresses: pieces of the people a model trained on are likelier to it
        than a never-seen person's, and a holdout value drawn against them ranks below chance (the British set's
        holdout phones: 0.41 bits against every split's pieces, where chance is 1.36 at the stop rule's K = 50)."""
        shape = skeleton(value)
        own = self.split_pieces.get(self.address_split or split, {}).get(field, {}).get(shape)
        if own is None and self.address_split is None:
            own = self.pieces.get(field, {}).get(shape)
        if own is None or math.prod(len(set(column)) for column in own) < PIECE_ROOM * len(own[0]):
            return None  # too few combinations besides the real values (numbered IDs): the format-preserving draw
        return own

    def _digits(self, field: str, value: str) -> str | None:
        count = len(re.sub(r"\D", "", value))
        if field == "ssn" and count == 9:
            return self.faker.ssn().replace("-", "")
        if field == "phone" and count == 10:
            return self.faker.numerify("%##%######")  # North-American: area code and exchange never start with 0
        return None

    def _keep_fixed(self, field: str, fake: str) -> str:
        fixed = self.fixed.get(field, {}).get(skeleton(fake), {})
        return "".join(fixed.get(i, c) for i, c in enumerate(fake))

    def _date(self, value: datetime.date, rng: random.Random) -> datetime.date:
        span = datetime.timedelta(days=15 * 365)  # too few dates in the data: 15 years either side
        low, high = self.date_range or (value - span, value + span)
        return low + datetime.timedelta(days=rng.randint(0, (high - low).days))

    def _email(self, value: str, name: str, rng: random.Random, wide: bool) -> str:
        local = value.rpartition("@")[0].lower()
        name_parts = [p.lower() for p in name.split() if p.isalpha()]
        if not (name_parts and any(p in local for p in name_parts)):
            name_parts = [self.faker.first_name().lower(), self.faker.last_name().lower()]
        joiner, digits, domain = rng.choice(self.email_styles or [_email_style(value)])
        if wide:
            joiner, digits = rng.choice((".", "_", "")), rng.choice((0, 1, 2))
            domain = rng.choice([domain, self.faker.free_email_domain()])
        suffix = str(rng.randint(10 ** (digits - 1), 10**digits - 1)) if digits else ""
        return f"{joiner.join(name_parts)}{suffix}@{domain}"

    def _address_from_data(self, value: str, rng: random.Random, split: str) -> str | None:
        """The value's own shape, its parts taken from the data's other addresses: a street from one (its number
        redrawn, same length), the unit part (if the value has one) format-preserving, and the place ("City, ST,
        ZIP" as one real unit, so city, state and ZIP agree) from another. Faker's vocabulary (``Kim Mountains``,
        ``Mcintyreville``) is not the data's, and a tokenizer trained on the data tells such fakes from real values:
        on LUME Task2, a never-seen person's real address ranked first among 50 Faker fakes 88-96 % of the time.

        The parts come from the addresses of the value's own split (forget, retain, holdout) where it has enough of
        the value's layout, else from every split. A fake is then exactly as familiar to the model as the value
        would be without its owner: a holdout person's street is as new as the other holdout streets, where among
        trained streets it would rank last for every model (measured on the demo: the holdout address reference was
        0.05 bits, a band no unlearned model reaches), and a forget person's street is as familiar as the other
        forget streets, so only the link to the person is measured. None when the data has too few addresses of
        the value's layout."""
        layout = _address_layout(value)
        if layout is None:
            return self._address_by_position(value, rng, split)
        own = self.split_address_parts.get(self.address_split or split)
        fits = own is not None and len(own[0]) >= MIN_AGREEING_VALUES
        fits = fits and len(own[1].get(layout[2], ())) >= MIN_AGREEING_VALUES
        if self.address_split is not None and not fits:
            return None  # too few addresses of that split: Faker's parts, not another split's
        streets, places = own if fits else self.address_parts
        if len(streets) < MIN_AGREEING_VALUES or len(places.get(layout[2], ())) < MIN_AGREEING_VALUES:
            return None
        _, unit, place_shape, end = layout
        street = rng.choice(streets)
        number, _, name = street.partition(" ")
        number = "".join(rng.choice(string.digits) for _ in number).lstrip("0") or str(rng.randint(1, 9))
        parts = [f"{number} {name}"]
        if unit is not None:
            parts.append(format_preserving(unit, rng) if re.search(r"[A-Za-z0-9]", unit) else unit)
        parts.append(rng.choice(places[place_shape]))
        return ", ".join(parts) + end

    def _address_by_position(self, value: str, rng: random.Random, split: str) -> str | None:
        """An address of a layout :func:`_address_layout` does not read, from the data's addresses of the same
        layout (:func:`_part_layout`: as many comma-separated parts, digits in the same ones): each part but the last
        two from another address's part at that position, its digits redrawn (a street number, a flat's), and the
        last two (the place: town and postcode, or county and postcode) together from one other address, as they
        stand; of a two-part address (``Lindenweg 12/3, 04109 Leipzig``), the street with its digits redrawn and the
        place (postcode and town) from another. Taken from the value's own split where it has at least
        :data:`MIN_AGREEING_VALUES` addresses of the layout, else from every split's, as :meth:`_address_from_data`
        takes them; with ``address_split``, that split's only. None where those are fewer than
        :data:`MIN_AGREEING_VALUES` (Faker's parts then)."""
        body, end = (value[:-1], ".") if value.endswith(".") else (value, "")
        layout = _part_layout(body)
        if len(layout) < 2:
            return None
        found = self.split_address_layouts.get(self.address_split or split, {}).get(layout, [])
        if len(found) < MIN_AGREEING_VALUES and self.address_split is None:
            found = self.address_layouts.get(layout, [])
        if len(found) < MIN_AGREEING_VALUES:
            return None
        place = 2 if len(layout) > 2 else 1  # "Lindenweg 12/3, 04109 Leipzig": the street, then postcode and town
        parts = [_redraw_digits(rng.choice(found)[i], rng) for i in range(len(layout) - place)]
        return ", ".join(parts + rng.choice(found)[-place:]) + end

    def _address(self, value: str, rng: random.Random) -> str:
        """Each comma-separated part redrawn as what it is: street line, unit, city, state, ZIP, "ST ZIP"."""
        body, end = (value[:-1], ".") if value.endswith(".") else (value, "")
        parts = []
        for part in body.split(", "):
            state = self.faker.state_abbr(include_territories=False, include_freely_associated_states=False)
            if re.fullmatch(r"[A-Z]{2} \d{5}(-\d{4})?", part):
                parts.append(f"{state} {self.faker.zipcode()}")
            elif re.fullmatch(r"[A-Z]{2}", part):
                parts.append(state)
            elif re.fullmatch(r"\d{5}", part):
                parts.append(self.faker.zipcode())
            elif re.fullmatch(r"\d+[A-Za-z]? \D.*", part):
                parts.append(self.faker.street_address())
            elif re.fullmatch(r"[A-Za-z .'-]+", part) and not re.match(r"(?i)(apt|suite|unit)\b", part):
                parts.append(self.faker.city())
            else:
                parts.append(format_preserving(part, rng) if re.search(r"[A-Za-z0-9]", part) else part)
        return ", ".join(parts) + end


_STREET = re.compile(r"\d+[A-Za-z]? \D.*")
_PLACE_SHAPES = (r"[A-Za-z .'-]+, [A-Z]{2}, \d{5}(-\d{4})?", r"[A-Za-z .'-]+, [A-Z]{2} \d{5}(-\d{4})?")


def _address_layout(value: str) -> tuple[str, str | None, int, str] | None:
    """``(street, unit or None, place shape index, end)`` of ``"12 Oak St[, unit], City, ST, 12345[.]"``; None for
    any other layout."""
    body, end = (value[:-1], ".") if value.endswith(".") else (value, "")
    parts = body.split(", ")
    if len(parts) < 3 or not _STREET.fullmatch(parts[0]):
        return None
    for tail in (3, 2):  # "City, ST, ZIP" or "City, ST ZIP"
        place = ", ".join(parts[-tail:])
        shape = next((i for i, p in enumerate(_PLACE_SHAPES) if re.fullmatch(p, place)), None)
        middle = parts[1:-tail]
        if shape is not None and len(middle) <= 1:
            return parts[0], (middle[0] if middle else None), shape, end
    return None


def _address_parts(addresses) -> tuple[list[str], dict[int, list[str]]]:
    """The data's street lines and its places ("City, ST, ZIP"), per place layout, for :meth:`_address_from_data`."""
    streets: list[str] = []
    places: dict[int, list[str]] = defaultdict(list)
    for value in addresses:
        layout = _address_layout(value)
        if layout is None:
            continue
        body = value[:-1] if value.endswith(".") else value
        parts = body.split(", ")
        streets.append(layout[0])
        places[layout[2]].append(", ".join(parts[-(3 if layout[2] == 0 else 2) :]))
    return sorted(set(streets)), {shape: sorted(set(found)) for shape, found in places.items()}


def _part_layout(body: str) -> tuple[bool, ...]:
    """An address's layout for :meth:`CandidateSampler._address_by_position`: per comma-separated part, whether it
    holds a digit (``Flat 4, Cole Plaza, Sheilaborough, M7B 5YJ`` → ``(True, False, False, True)``)."""
    return tuple(any(c in string.digits for c in part) for part in body.split(", "))


def _layout_parts(addresses) -> dict[tuple[bool, ...], list[list[str]]]:
    """The data's addresses cut into their comma-separated parts, per :func:`_part_layout`, each once."""
    found: dict[tuple[bool, ...], set[tuple[str, ...]]] = defaultdict(set)
    for value in addresses:
        body = value[:-1] if value.endswith(".") else value
        found[_part_layout(body)].add(tuple(body.split(", ")))
    return {layout: [list(parts) for parts in sorted(group)] for layout, group in found.items()}


def _redraw_digits(text: str, rng: random.Random) -> str:
    """``text`` with every digit redrawn and each number's length kept: the first digit of a number from 1–9, or
    kept where it is a zero (``Flat 08``: the data's format), the rest from 0–9."""
    out = []
    for i, c in enumerate(text):
        first = not (i and text[i - 1] in string.digits)
        out.append(c if c not in string.digits or (first and c == "0") else rng.choice(string.digits[first:]))
    return "".join(out)


PIECES = re.compile(r"\d{1,3}|[A-Za-z]+|[^A-Za-z\d]")
"""How :func:`_position_pieces` cuts a value: digits in groups of up to three from the left (as the offline
tokenizer and OLMo 2's cut numbers before BPE), runs of letters, and each other character."""


PIECE_ROOM = 10
"""The piece draw is used only where its pieces make at least this many times as many combinations as there are
values they were cut from, so that a draw is seldom a real value, which is refused: where nearly every
combination is real (``ID-00100`` to ``ID-00129`` vary in one piece), the draws would run out and the value would
count as guessable, as if its prompt gave it away."""


def _position_pieces(values: list[str]) -> dict[str, list[list[str]]]:
    """Per format (skeleton) that at least :data:`MIN_AGREEING_VALUES` distinct values have: the values cut by
    :data:`PIECES` (one format cuts alike), and per piece position every piece the values have there, once per
    distinct value that has it, for :meth:`CandidateSampler._draw`.

    Pieces, not characters: a tokenizer trained on the data has merged the digit groups and letter runs its values
    hold (a British phone's ``907``, an NI number's `` EP``) and not most others, so a value drawn character by
    character is cut into more, rarer tokens than any real one, and a model that never saw its owner still ranks
    the real value above such fakes (measured on the British set: ``docs/METHODS.md``, *Fakes piece by piece*)."""
    by_shape: dict[str, set[str]] = defaultdict(set)
    for value in values:
        by_shape[skeleton(value)].add(value)
    found = {}
    for shape, group in by_shape.items():
        if len(group) >= MIN_AGREEING_VALUES and any(c in "9Aa" for c in shape):
            found[shape] = [sorted(column) for column in zip(*(PIECES.findall(v) for v in sorted(group)))]
    return found


def _fixed_positions(values: list[str]) -> dict[str, dict[int, str]]:
    """Per format (skeleton), the positions where at least :data:`MIN_AGREEING_VALUES` values all agree."""
    by_shape: dict[str, list[str]] = defaultdict(list)
    for value in values:
        by_shape[skeleton(value)].append(value)
    fixed = {}
    for shape, group in by_shape.items():
        if len(group) >= MIN_AGREEING_VALUES:
            columns = (Counter(v[i] for v in group) for i in range(len(shape)))
            agreed = {i: next(iter(c)) for i, c in enumerate(columns) if len(c) == 1 and shape[i] in "9Aa"}
            if agreed:
                fixed[shape] = agreed
    return fixed

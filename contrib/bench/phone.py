"""Phone normalization speed: phonenumbers' parse + is_valid_number against the fast path.

Run from the repository root::

    .venv/bin/python contrib/bench/phone.py                    # 100k numbers per shape
    .venv/bin/python contrib/bench/phone.py --count 20000 --repeat 3
    .venv/bin/python contrib/bench/phone.py --old-count 100000 # the old path on all of them

Each shape is `--count` unique numbers of one kind real traffic has: "+CC …" in the
international format of ten large countries (their example mobile and fixed-line numbers with
the last six digits redrawn: valid numbers, nearly all), national numbers read with a
region hint (GB, US, FR, DE), "00CC …" read in GB, the fiction range "+44 7700 9…" (all
invalid: Ofcom's drama range), and a shuffled mix of all of them.

Timed per shape, `--repeat` times, median reported, in µs per call:

* old: `_e164_reference` behind a fresh lru_cache, i.e. the code before the fast path; the
  numbers are unique, so every call misses. It is timed on the first `--old-count` numbers
  only (its cost per call does not depend on how many), to keep a run within minutes;
* new: `e164` (lru_cache, fast path, fallback) with its cache cleared first.

Also printed: how many of the shape's numbers the fast path declines (left to phonenumbers)
and how many are valid. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from tracklayerd.pipeline import phone

MAJOR = ["GB", "US", "DE", "FR", "IT", "ES", "NL", "AU", "BR", "IN"]
TAIL = 6  # digits redrawn at the end of each example number: 1,000,000 unique per shape


def redraw_tail(template: str, values: list[int]) -> list[str]:
    """`template` (a formatted number) with its last TAIL digits replaced by each value,
    separators kept where they were."""
    positions = [i for i, c in enumerate(template) if c.isdigit()][-TAIL:]
    out = []
    for value in values:
        chars = list(template)
        for position, digit in zip(positions, f"{value:0{TAIL}d}", strict=True):
            chars[position] = digit
        out.append("".join(chars))
    return out


def examples(region: str, form: PhoneNumberFormat) -> list[str]:
    numbers = [phonenumbers.example_number_for_type(region, kind)
               for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)]
    return [phonenumbers.format_number(n, form) for n in numbers if n is not None]


def shape(region: str, form: PhoneNumberFormat, count: int, rnd: random.Random) -> list[str]:
    """`count` unique numbers: the region's example mobile and fixed-line numbers in `form`,
    alternately, each with a different tail."""
    templates = examples(region, form)
    values = rnd.sample(range(10**TAIL), count)
    made: list[str] = []
    for i, template in enumerate(templates):
        made += redraw_tail(template, values[i::len(templates)])
    rnd.shuffle(made)
    return made


def shapes(count: int, seed: int) -> dict[str, tuple[list[str], str | None]]:
    """Name → (numbers, region hint)."""
    rnd = random.Random(seed)
    made: dict[str, tuple[list[str], str | None]] = {}
    for region in MAJOR:
        made[f"+CC {region}"] = (shape(region, PhoneNumberFormat.INTERNATIONAL, count, rnd), None)
    for region in ("GB", "US", "FR", "DE"):
        numbers = shape(region, PhoneNumberFormat.NATIONAL, count, rnd)
        made[f"national in {region}"] = (numbers, region)
    made["00CC in GB"] = (["00" + n[1:] for n in made["+CC FR"][0]], "GB")
    # The other benchmarks' phone: Ofcom's drama range, which libphonenumber holds invalid
    # (and, +44 being shared with GG, IM and JE, checks in every one of them).
    drama = rnd.sample(range(10**5), min(count, 10**5))
    made["+44 7700 9… (invalid)"] = ([f"+44 7700 9{i:05d}" for i in drama], None)
    return made


def per_call(read: Callable[[str, str | None], str], pairs: list[tuple[str, str | None]]) -> float:
    """µs per call over `pairs`, once."""
    start = time.perf_counter()
    for text, region in pairs:
        read(text, region)
    return (time.perf_counter() - start) / len(pairs) * 1e6


def time_old(pairs: list[tuple[str, str | None]]) -> float:
    """The code as it was: phonenumbers behind a fresh (so always missing) lru_cache."""
    old = lru_cache(maxsize=16384)(phone._e164_reference)
    return per_call(old, pairs)


def time_new(pairs: list[tuple[str, str | None]]) -> float:
    phone.e164.cache_clear()
    return per_call(phone.e164, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="unique numbers per shape")
    parser.add_argument("--old-count", type=int, default=10_000,
                        help="of which the old path reads the first N (default 10,000)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    made = shapes(args.count, args.seed)
    mix: list[tuple[str, str | None]] = [
        (n, region) for numbers, region in made.values() for n in numbers
    ]
    random.Random(args.seed).shuffle(mix)
    groups = {name: [(n, region) for n in numbers] for name, (numbers, region) in made.items()}
    groups["mix of the above"] = mix[:args.count]

    # Warm both: metadata loading and regex compilation happen once per region, not per call.
    for pairs in groups.values():
        for text, region in pairs[:50]:
            phone._e164_reference(text, region)
            phone._e164_fast(text, region)

    print(f"{args.count:,} unique numbers per shape (old path: first {args.old_count:,}), "
          f"median of {args.repeat} runs, µs per call")
    print(f"{'shape':<22} {'old':>8} {'new':>8} {'speed-up':>9} {'declined':>9} {'valid':>7}")
    for name, pairs in groups.items():
        old = statistics.median(time_old(pairs[:args.old_count]) for _ in range(args.repeat))
        new = statistics.median(time_new(pairs) for _ in range(args.repeat))
        declined = sum(phone._e164_fast(t, r) is None for t, r in pairs) / len(pairs)
        valid = sum(phone.e164(t, r).startswith("+") for t, r in pairs) / len(pairs)
        print(f"{name:<22} {old:8.1f} {new:8.1f} {old / new:8.1f}x {declined:9.1%} {valid:7.1%}")


if __name__ == "__main__":
    main()

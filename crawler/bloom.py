"""Bloom filter sizing and bit positions for the `dedupe = "bloom"` intake (pure, no Redis).

The filter lives in one Redis bitmap per job, `{prefix}:job:{id}:bloom`; claim.lua tests and
sets its bits. This module says how big it is (`BloomParams.for_capacity`), how wrong it may
be (`expected_fp_rate`), and which bits a URL owns (`positions`, the reference for the Lua).

What a false positive means here: a URL the filter wrongly takes for already accepted is
dropped at intake like a duplicate (counted under `duplicates` / `link_duplicates`). It is
never fetched and gets no record, and it is not counted in `total`, so the job still finishes
(total == done); the crawl silently misses that URL and, when it is a page, the links only it
led to. A filter never forgets: a URL accepted once is always dropped again (no false
negatives), so no URL is fetched twice because of it.

Only the intake dedupe is approximate. The `seen` set, which makes record writes exactly-once
(a redelivered batch writes nothing twice), stays an exact set in both modes.

Memory: the bitmap is allocated whole on the job's first claim, m / 8 bytes (1.2 MB per
million URLs at 1 %, 1.8 MB at 0.1 %; the exact set takes about 64 MB per million). It is for
a real Redis server: fakeredis (the embedded crawl without a Redis URL) copies the whole
bitmap on every SETBIT, so there a filter of more than a few kB crawls slowly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# A Redis string holds at most 512 MiB (proto-max-bulk-len), so a bitmap at most 2^32 bits,
# and SETBIT/BITFIELD take offsets below that.
MAX_BITS = 2**32


class BloomParams(NamedTuple):
    """A filter's size in bits (`m_bits`, a multiple of 8) and its hash count (`k`)."""

    m_bits: int
    k: int

    @classmethod
    def for_capacity(cls, capacity: int, error_rate: float) -> BloomParams:
        """The smallest filter with false-positive rate `error_rate` after `capacity` URLs:
        m = -n ln p / (ln 2)^2 (rounded up to whole bytes), k = round(m / n * ln 2).

        ValueError when that needs more than a Redis bitmap holds (2^32 bits = 512 MiB)."""
        if capacity < 1 or not 0 < error_rate < 1:
            raise ValueError("capacity must be >= 1 and error_rate between 0 and 1")
        bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        m = -(-bits // 8) * 8
        if m > MAX_BITS:
            raise ValueError(
                f"a Bloom filter for {capacity:,} URLs at error rate {error_rate:g} needs "
                f"{m:,} bits; a Redis bitmap holds at most 2^32 bits (512 MiB): at most "
                f"{max_capacity(error_rate):,} URLs at that error rate")
        return cls(m, max(1, round(m / capacity * math.log(2))))


def max_capacity(error_rate: float) -> int:
    """The most URLs a 2^32-bit filter holds at `error_rate` (for error messages)."""
    return int(MAX_BITS * math.log(2) ** 2 / -math.log(error_rate))


def expected_fp_rate(m_bits: int, k: int, n: int) -> float:
    """The chance that a URL never added is taken for seen, once `n` URLs are in the filter:
    (1 - e^(-k n / m))^k. Such a URL is dropped as a duplicate, never fetched (see above)."""
    return (1.0 - math.exp(-k * n / m_bits)) ** k


def positions(digest: bytes, m_bits: int, k: int) -> list[int]:
    """The `k` bits a URL owns, from its 16-byte BLAKE2b digest (`crawler.store.url_digest`).

    Double hashing, as claim.lua computes it: h1, h2 = the digest's first two big-endian
    32-bit words, h2 made odd (so it is never 0, and with m a power of two the k positions
    differ); position i = (h1 + i * step) mod m, step = h2 mod m (1 if that is 0). Lua 5.1
    numbers are doubles: every intermediate there stays below 2^33, exact."""
    h1 = int.from_bytes(digest[0:4], "big")
    h2 = int.from_bytes(digest[4:8], "big") | 1
    step = (h2 % m_bits) or 1
    return [(h1 + i * step) % m_bits for i in range(k)]

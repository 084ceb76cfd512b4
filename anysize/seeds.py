"""What a seed is, in every front end and patch: an integer in [0, MAX_SEED]."""

from __future__ import annotations

from .errors import InvalidArgumentError

#: the largest seed: seeds are integers in [0, MAX_SEED] in every front end (torch's manual_seed takes
#: negative ones too, but records them as their unsigned 64-bit twin: the PNG's seed would not be the one given)
MAX_SEED = 2**63 - 1


def seed_list(seed) -> list[int]:
    """``seed`` (one integer, or one per image) as a list, each checked to be in [0, MAX_SEED]."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds):
        raise InvalidArgumentError(f"seed must be an integer in [0, {MAX_SEED}] or a list of them, got {seed!r}")
    return seeds

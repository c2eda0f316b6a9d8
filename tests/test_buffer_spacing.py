"""A small op's bits must not depend on where its buffers land (csrc/tape.c buf_bytes): GCC's
vectorised libm loops check at run time that the output is a vector away from each input (a
broadcast 0-d operand included) and run the scalar loop (scalar libm, other rounding) otherwise.
Buffers under 64 bytes came from malloc 32 or 48 bytes apart, so logaddexp of a 0-d and a (4,)
tensor gave other last bits in about 1 call in 12 with a stirred heap, and then differed from its
replay, whose arena keeps buffers apart (test_record's case failed in a full run). That symptom
shows only in some heap states (never in 200 stirred calls under pytest on the old code), so the
test below checks the invariant itself, which failed on the old code at once."""

import random

import numpy as np

import pyautodiff as ad
from pyautodiff._capi import ffi


def _address(t):
    return int(ffi.cast("uintptr_t", t._info().data))


def test_live_buffers_start_a_vector_apart():
    # the invariant itself, deterministic: every value buffer takes 64 bytes or more
    rng = random.Random(1)
    ts = [ad.tensor(np.ones(rng.randint(1, 9), dtype=rng.choice([np.float32, np.float64])))
          for _ in range(300)]
    del ts[::3]                                     # freed buffers are handed out again
    ts += [ad.exp(ad.tensor(np.ones(rng.randint(1, 9)))) for _ in range(100)]
    ts += [ad.tensor(1.5) * ad.tensor(np.ones(4)) for _ in range(50)]
    addresses = sorted(_address(t) for t in ts)
    gaps = np.diff(addresses)
    assert gaps.min() >= 64, gaps.min()


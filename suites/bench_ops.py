"""asv: pad, mask, pack+unpack and masked_mean per framework and length profile (B=64, T=128, 64 features)."""
from __future__ import annotations

from suites import common

IMPLS = common.impls()                       # "framework" (ops have no strategies)
OPS = ["pad", "mask", "pack_unpack", "masked_mean"]
PROFILES = ["equal", "zipf"]                # length skew (harness.profiles): none, long tail
CASE = dict(batch=64, max_len=128, features=64)


def _case(framework, op, profile):
    return common.full_case(framework, op=op, profile=profile, **CASE)


class Ops:
    """Wall time and process peak memory; each parameter set runs in its own process (asv)."""

    params = (IMPLS, OPS, PROFILES)
    param_names = ["framework", "op", "profile"]
    timeout = 300

    def setup(self, framework, op, profile):
        self.adapter, self.case = common.setup_case(framework, op=op, profile=profile, **CASE)

    def time_op(self, *args):
        self.case.call()

    def peakmem_op(self, *args):
        self.case.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds (framework, inputs): subtract from peakmem_op."""


class OpsTracks:
    """Derived figures, all lower-is-better, from one `varlen bench` sweep (setup_cache)."""

    params = Ops.params
    param_names = Ops.param_names
    timeout = 1800
    case = staticmethod(_case)

    def setup_cache(self):  # its own function per class: asv keys setup_cache results by source location
        return common.sweep_all(self)

    setup = common.setup_measured
    track_sec_per_M_valid_tokens = common.track("sec_per_M_valid_tokens", "s/Mtok",
                                                "Seconds per million valid tokens.")
    track_times_floor = common.track("fraction_of_floor", "x floor",
                                     "Measured time over the copy-bandwidth floor time.", invert=True)

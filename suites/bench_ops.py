"""asv: pad, mask, pack+unpack and masked_mean per framework, batch size and length profile."""
from __future__ import annotations

from suites import common

BATCHES = [8, 64, 256]                      # sequences per batch
PROFILES = ["equal", "lognormal", "zipf"]   # length skew (harness.profiles)
OPS = ["pad", "mask", "pack_unpack", "masked_mean"]


class Ops:
    params = (common.impls(rnn=False), OPS, BATCHES, PROFILES)
    param_names = ["framework", "op", "batch", "profile"]
    timeout = 300

    def setup(self, framework, op, batch, profile):
        self.adapter, self.case = common.setup_case(framework, op=op, batch=batch, max_len=128, profile=profile,
                                                    features=64)

    def time_op(self, *args):
        self.case.call()

    def track_sec_per_M_valid_tokens(self, *args):
        return common.sec_per_million_valid_tokens(self.adapter, self.case)

    track_sec_per_M_valid_tokens.unit = "s/Mtok"

    def track_times_floor(self, *args):
        return common.times_floor(self.adapter, self.case)

    track_times_floor.unit = "x floor"

    def peakmem_op(self, *args):
        self.case.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds (inputs, framework): subtract from peakmem_op."""

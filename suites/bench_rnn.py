"""asv: masked LSTM forward and forward+backward per framework:strategy, device and length profile
(B=64, T=128, I=H=128, float32)."""
from __future__ import annotations

import itertools

from suites import common

IMPLS = common.impls(rnn=True)               # "framework:strategy"
DEVICES = ["cpu", "gpu"]                     # skipped where the framework sees no GPU
PROFILES = ["equal", "lognormal"]            # length skew (harness.profiles)
CASE = dict(batch=64, max_len=128, cell="lstm", hidden=128, input_size=128, num_layers=1, bidirectional=False)


def _case(impl, device, profile, op="rnn_forward_backward"):
    return common.full_case(impl, op=op, device=device, profile=profile, **CASE)


class Rnn:
    """Wall time and process peak memory; each parameter set runs in its own process (asv)."""

    params = (IMPLS, DEVICES, PROFILES)
    param_names = ["impl", "device", "profile"]
    timeout = 600

    def setup(self, impl, device, profile):
        kw = dict(device=device, profile=profile, **CASE)
        self.adapter, self.fwd = common.setup_case(impl, op="rnn_forward", **kw)
        _, self.fwd_bwd = common.setup_case(impl, op="rnn_forward_backward", **kw)

    def time_forward(self, *args):
        self.fwd.call()

    def time_forward_backward(self, *args):
        self.fwd_bwd.call()

    def peakmem_forward_backward(self, *args):
        self.fwd_bwd.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds: subtract from peakmem_forward_backward."""


class RnnTracks:
    """Derived forward+backward figures, all lower-is-better, from one `varlen bench` sweep (setup_cache)."""

    params = Rnn.params
    param_names = Rnn.param_names
    timeout = 3600

    def setup_cache(self):
        return common.sweep_records([_case(*p) for p in itertools.product(*Rnn.params)])

    def track_sec_per_M_valid_tokens(self, cache, *p):
        return common.tracked(cache, _case(*p), "sec_per_M_valid_tokens")

    track_sec_per_M_valid_tokens.unit = "s/Mtok"

    def track_times_floor(self, cache, *p):
        """Measured time over the GEMM floor time on valid tokens (1 / fraction of floor)."""
        return 1.0 / common.tracked(cache, _case(*p), "fraction_of_floor")

    track_times_floor.unit = "x floor"

    def track_compile_seconds(self, cache, *p):
        """First call minus a warm call (jit / tf.function trace+compile; first-call overhead when eager)."""
        return common.tracked(cache, _case(*p), "compile_s")

    track_compile_seconds.unit = "seconds"

    def track_peak_bytes(self, cache, *p):
        """Device allocator peak on GPU; on CPU the RSS peak of one call above the RSS before it."""
        field = "peak_rss_bytes" if p[1] == "cpu" else "device_peak_bytes"
        return common.tracked(cache, _case(*p), field)

    track_peak_bytes.unit = "bytes"

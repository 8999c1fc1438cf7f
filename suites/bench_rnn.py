"""asv: masked LSTM forward and forward+backward per framework:strategy, device and length profile
(B=64, T=128, I=H=128, float32)."""
from __future__ import annotations

from suites import common

IMPLS = common.impls("rnn")               # "framework:strategy"
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
    case = staticmethod(_case)

    def setup_cache(self):  # its own function per class: asv keys setup_cache results by source location
        return common.sweep_all(self)

    setup = common.setup_measured
    track_sec_per_M_valid_tokens = common.track("sec_per_M_valid_tokens", "s/Mtok",
                                                "Seconds per million valid tokens, forward+backward.")
    track_times_floor = common.track("fraction_of_floor", "x floor",
                                     "Measured time over the GEMM floor time on valid tokens.", invert=True)
    track_peak_bytes = common.track("peak_bytes", "bytes", "Device allocator peak on GPU; on CPU the RSS peak of "
                                    "one call above the RSS before it.")


class RnnCompile:
    """Compile seconds: first call minus a warm call, one fresh shape per parameter set (profile fixed)."""

    params = (IMPLS, DEVICES)
    param_names = ["impl", "device"]
    timeout = 1800
    case = staticmethod(lambda impl, device: _case(impl, device, "equal"))

    def setup_cache(self):  # its own function per class: asv keys setup_cache results by source location
        return common.sweep_all(self)

    setup = common.setup_measured
    track_compile_seconds = common.track("compile_s", "seconds", "jit / tf.function trace+compile; first-call "
                                         "overhead for eager strategies.")

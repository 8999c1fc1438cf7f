"""asv: masked RNN forward and forward+backward per framework:strategy, device, batch size and length profile."""
from __future__ import annotations

from suites import common

BATCHES = [8, 64]                           # sequences per batch
PROFILES = ["equal", "lognormal", "zipf"]   # length skew (harness.profiles)
DEVICES = ["cpu", "gpu"]                    # skipped where the framework sees no GPU
CASE = dict(max_len=128, cell="lstm", hidden=128, input_size=128, num_layers=1, bidirectional=False)


class Rnn:
    params = (common.impls(rnn=True), DEVICES, BATCHES, PROFILES)
    param_names = ["impl", "device", "batch", "profile"]
    timeout = 600

    def setup(self, impl, device, batch, profile):
        kw = dict(device=device, batch=batch, profile=profile, **CASE)
        self.device = device
        self.adapter, self.fwd = common.setup_case(impl, op="rnn_forward", **kw)
        _, self.fwd_bwd = common.setup_case(impl, op="rnn_forward_backward", **kw)

    def time_forward(self, *args):
        self.fwd.call()

    def time_forward_backward(self, *args):
        self.fwd_bwd.call()

    def track_sec_per_M_valid_tokens_forward_backward(self, *args):
        return common.sec_per_million_valid_tokens(self.adapter, self.fwd_bwd)

    track_sec_per_M_valid_tokens_forward_backward.unit = "s/Mtok"

    def track_times_floor_forward_backward(self, *args):
        return common.times_floor(self.adapter, self.fwd_bwd)

    track_times_floor_forward_backward.unit = "x floor"

    def track_peak_bytes_forward_backward(self, *args):
        """Device allocator peak on GPU; on CPU the RSS peak of one call above the RSS before it."""
        return common.peak_bytes(self.adapter, self.fwd_bwd, self.device)

    track_peak_bytes_forward_backward.unit = "bytes"

    def peakmem_forward_backward(self, *args):
        self.fwd_bwd.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds: subtract from peakmem_forward_backward."""


class RnnCompile:
    """Compile (trace) seconds: the first call's time minus a warm call's; a fresh shape per parameter set."""

    params = (common.impls(rnn=True), [8, 64])
    param_names = ["impl", "batch"]
    timeout = 600

    def setup(self, impl, batch):
        self.impl, self.batch = impl, batch

    def track_compile_seconds(self, impl, batch):
        from harness import timing

        adapter, p = common.setup_case(impl, op="rnn_forward_backward", device="cpu", batch=batch,
                                       profile="lognormal", **{**CASE, "max_len": 96 + batch})
        warm = timing.measure(p.call, compile_count=adapter.compile_count, min_repeats=3).median_s
        return max(p.first_call_s - warm, 0.0)

    track_compile_seconds.unit = "seconds"

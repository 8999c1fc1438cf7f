"""asv: masked self-attention forward and forward+backward per framework:strategy, device and length profile
(B=32, T=512, Hq=8 over Hkv=2 heads of size 64, float32; the harness's attention family builds the case)."""
from __future__ import annotations

import adapters
from harness import axes
from suites import common

IMPLS = [f"{fw}:{s}" for fw in axes.FRAMEWORKS for s in adapters.declared_strategies(fw, "attention")]
DEVICES = ["cpu", "gpu"]                     # skipped where the framework sees no GPU
PROFILES = ["equal", "lognormal"]            # length skew (harness.profiles)
CASE = dict(batch=32, max_len=512, heads=8, kv_heads=2, head_dim=64, causal=False)


def _case(impl, device, profile, op="attention_forward_backward"):
    return common.full_case(impl, op=op, device=device, profile=profile, **CASE)


def _setup(impl, op, **kw):
    """common.setup_case, with a strategy whose precondition fails here skipped (asv: n/a), not failed."""
    try:
        return common.setup_case(impl, op=op, **kw)
    except ValueError as e:
        raise NotImplementedError(str(e)) from None


class Attention:
    """Wall time and process peak memory; each parameter set runs in its own process (asv)."""

    params = (IMPLS, DEVICES, PROFILES)
    param_names = ["impl", "device", "profile"]
    timeout = 600

    def setup(self, impl, device, profile):
        kw = dict(device=device, profile=profile, **CASE)
        self.adapter, self.fwd = _setup(impl, "attention_forward", **kw)
        _, self.fwd_bwd = _setup(impl, "attention_forward_backward", **kw)

    def time_forward(self, *args):
        self.fwd.call()

    def time_forward_backward(self, *args):
        self.fwd_bwd.call()

    def peakmem_forward_backward(self, *args):
        self.fwd_bwd.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds: subtract from peakmem_forward_backward."""


class AttentionTracks:
    """Derived forward+backward figures, all lower-is-better, from one `varlen bench` sweep (setup_cache)."""

    params = Attention.params
    param_names = Attention.param_names
    timeout = 3600
    case = staticmethod(_case)

    def setup_cache(self):  # its own function per class: asv keys setup_cache results by source location
        return common.sweep_all(self)

    setup = common.setup_measured
    track_sec_per_M_valid_tokens = common.track("sec_per_M_valid_tokens", "s/Mtok",
                                                "Seconds per million valid tokens, forward+backward.")
    track_times_floor = common.track("fraction_of_floor", "x floor",
                                     "Measured time over the GEMM floor time on valid-token attention FLOPs.",
                                     invert=True)

"""asv: masked softmax CE forward+backward per framework:strategy, device and length profile
(B=64, T=128, C=1024, float32).

Cases are built by the loss family's own `prepare` (`harness.families.loss`), so the inputs, the strategy and the
ideal work are exactly those of `varlen bench`; each parameter set runs in its own process (asv).
"""
from __future__ import annotations

import adapters
from harness.axes import FRAMEWORKS
from harness.families import loss as family
from suites import common

OP = "loss_softmax_ce"
IMPLS = [f"{fw}:{s}" for fw in FRAMEWORKS for s in adapters.declared_strategies(fw, "loss")
         if family._computes(fw, s, family.OP_KIND[OP])]
DEVICES = ["cpu", "gpu"]                     # skipped where the framework sees no GPU
PROFILES = ["equal", "lognormal"]            # length skew (harness.profiles)
CASE = dict(batch=64, max_len=128, classes=family.CLASSES)


class Loss:
    """Wall time and process peak memory of one masked softmax CE forward + backward."""

    params = (IMPLS, DEVICES, PROFILES)
    param_names = ["impl", "device", "profile"]
    timeout = 600

    def setup(self, impl, device, profile):
        framework = impl.partition(":")[0]
        if framework not in adapters.available():
            raise NotImplementedError(f"{framework} is not installed")
        adapter = adapters.get(framework)
        if device not in adapter.devices():
            raise NotImplementedError(f"{framework} sees no {device}")
        prepared = family.prepare(adapter, common.full_case(impl, op=OP, device=device, profile=profile, **CASE))
        self.run = lambda: (prepared.run(), adapter.sync(device))
        self.run()  # compile / warm up outside the timed region

    def time_forward_backward(self, *args):
        self.run()

    def peakmem_forward_backward(self, *args):
        self.run()

"""asv: embedding lookup and embedding bag (mean), forward + backward, per framework:strategy, device and length
profile (B=64, T=128, V=32768, E=256, float32)."""
from __future__ import annotations

import adapters
from harness.axes import FRAMEWORKS
from harness.families import embedding as family
from suites import common

IMPLS = [f"{fw}:{s}" for fw in FRAMEWORKS for s in adapters.declared_strategies(fw, "embedding")]  # fw:strategy
OPS = list(family.OPS)                       # embed_forward_backward, embedding_bag_mean
DEVICES = ["cpu", "gpu"]                     # skipped where the framework sees no GPU
PROFILES = ["equal", "lognormal"]            # length skew (harness.profiles)
CASE = dict(batch=64, max_len=128, vocab=family.VOCAB, embed_dim=family.EMBED_DIM)


class Embedding:
    """Wall time and process peak memory of one fwd+bwd call; each parameter set runs in its own process (asv).
    A strategy that cannot run an op (F.embedding_bag has no per-step output) is skipped, not failed."""

    params = (IMPLS, OPS, DEVICES, PROFILES)
    param_names = ["impl", "op", "device", "profile"]
    timeout = 600

    def setup(self, impl, op, device, profile):
        framework, _, strategy = impl.partition(":")
        if not family._offers(framework, strategy, op):
            raise NotImplementedError(f"{impl} does not run {op}")
        self.adapter, self.case = common.setup_case(impl, op=op, device=device, profile=profile, **CASE)

    def time_forward_backward(self, *args):
        self.case.call()

    def peakmem_forward_backward(self, *args):
        self.case.call()

    def peakmem_baseline(self, *args):
        """What setup alone holds: subtract from peakmem_forward_backward."""

"""varlen's framework-free core. Importing it imports the contract's value types only (no framework)."""
from harness.spec import Packed, RnnOut, RnnSpec, init_params

__all__ = ["RnnOut", "RnnSpec", "Packed", "init_params"]

"""varlen's framework-free core. Importing it imports the contract's value types only (no framework)."""
from adapters.spec import AttnOut, Packed, RnnOut, RnnSpec, init_params

__all__ = ["AttnOut", "RnnOut", "RnnSpec", "Packed", "init_params"]

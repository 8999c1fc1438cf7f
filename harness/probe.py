"""`python -m harness.probe FRAMEWORK`: one JSON line on what the framework sees (run in its own process)."""
from __future__ import annotations

import json
import sys

if __name__ == "__main__":
    import adapters

    a = adapters.get(sys.argv[1])
    print(json.dumps({"framework": a.name, "version": a.version, "devices": a.devices(),
                      "report": a.device_report()}))

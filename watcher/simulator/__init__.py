"""A FLORA API simulator for development, tests and benchmarks (CONTRACT §7, shared/flora-api.md).

``Simulator`` holds the runs, the fault knobs and the counters and makes the aiohttp app; ``run_simulator``
serves one on loopback. ``scenario`` (pure) decides how runs progress; ``faults`` (pure) what goes wrong.
"""

from watcher.simulator.app import RunningSimulator, Simulator, run_simulator
from watcher.simulator.faults import Faults

__all__ = ["Faults", "RunningSimulator", "Simulator", "run_simulator"]

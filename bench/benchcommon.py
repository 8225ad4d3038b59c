"""Pieces every benchmark here shares: setup/run errors, the pinned-version check, the CPU model,
the share of the machine other processes used during a measurement, and the goal verdict.

The benchmarks import it as a sibling module (`python bench/NAME.py` puts bench/ on sys.path).
"""
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version


class SetupError(Exception):
    """Something to fix before benchmarking (exit status 2)."""


class RunError(Exception):
    """A measured run failed; the message holds the command and its error output."""


def check_versions(pins, hint):
    """Raises SetupError naming every package whose installed version differs from its pin."""
    wrong = []
    for name, want in pins.items():
        try:
            have = version(name).split("+")[0]
        except PackageNotFoundError:
            have = "not installed"
        if have != want:
            wrong.append(f"{name}=={want} (found {have})")
    if wrong:
        raise SetupError(f"this benchmark pins {', '.join(wrong)}; {hint}")


class OtherLoad:
    """Share of the machine's CPU time used by processes other than this one and its children
    between start() and share(): the competition a round's figures were measured under.
    Machine-wide busy time comes from /proc/stat (steal included); None where there is none."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start()

    def _snapshot(self):
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        busy = (user + nice + system + irq + softirq + steal) / self.tick
        return busy, own, time.perf_counter()

    def start(self):
        self.begin = self._snapshot()

    def share(self):
        end = self._snapshot()
        if self.begin is None or end is None:
            return None
        busy, own, wall = (e - b for e, b in zip(end, self.begin))
        return max(0.0, (busy - own) / (wall * os.cpu_count()))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def goal_text(ratio, goal, at_least=True):
    """`1.23 (≥ 1.2: met)`: the ratio and whether it meets a lower (or, with at_least=False,
    upper) bound."""
    if ratio is None:
        return "—"
    met = ratio >= goal if at_least else ratio <= goal
    return f"{ratio:.2f} ({'≥' if at_least else '≤'} {goal}: {'met' if met else 'NOT met'})"

"""Facts about this machine and this installation that several layers read: the CPU model
and flags (every speed figure names them; int8 auto keys its decision on them) and where the
bundled demo recordings are. No heavy imports."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo"  # the bundled CC0 recordings (monitor/demo/CREDITS.md)


def cpu_info() -> tuple[str, str]:
    """This machine's CPU model name and flags from /proc/cpuinfo ("unknown", "" elsewhere):
    every speed figure names the CPU it was measured on."""
    cpu, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu, flags

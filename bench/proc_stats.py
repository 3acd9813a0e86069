"""Readings of another process from /proc (Linux): CPU seconds, resident and peak memory."""

from __future__ import annotations

import os
from typing import Final

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_KIB: Final = 1024
_MIB: Final = 1024 * 1024
# Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the ")" that ends the name.
_UTIME_AFTER_NAME: Final = 11
_STIME_AFTER_NAME: Final = 12


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of the process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[_UTIME_AFTER_NAME]) + int(fields[_STIME_AFTER_NAME])) / _CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} is not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS), in MiB."""
    return _status_kib(pid, "VmRSS") * _KIB / _MIB


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size since the process started (VmHWM), in MiB."""
    return _status_kib(pid, "VmHWM") * _KIB / _MIB


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent not idle since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / _CLOCK_TICKS

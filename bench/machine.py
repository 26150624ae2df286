"""The machine a benchmark ran on, for its JSON: CPU ratios differ by vendor and model, so every figure names it."""

import os
import platform


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it (platform.processor() elsewhere), with its family and model, which tell
    generations apart where a virtual machine's name does not (an "AMD EPYC" of family 23 is a Zen 1 to Zen 2,
    of 26 a Zen 5), and its logical CPUs."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        fields = {}
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    generation = f"family {fields['cpu family']}, model {fields['model']}; " if "cpu family" in fields else ""
    return f"{name} ({generation}{os.cpu_count()} logical CPUs)"

"""This box: hardware probe, accelerators, telemetry (runtimes it can use: `runtimes.doctor`)."""

from edgebox.hardware.probe import Accelerator, HardwareProfile, probe

__all__ = ["Accelerator", "HardwareProfile", "probe"]

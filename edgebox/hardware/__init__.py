"""This box: hardware probe, and which runtimes and fast paths it can use."""

from edgebox.hardware.probe import Accelerator, HardwareProfile, probe

__all__ = ["Accelerator", "HardwareProfile", "probe"]

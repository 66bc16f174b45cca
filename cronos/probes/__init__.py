"""Probe plug-ins: pure state machines, one per measured TCP state."""

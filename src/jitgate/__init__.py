"""jitgate: Just-In-Time action approval.

Stops dangerous actions at the moment they are attempted, holds them until the
right people approve, and records everything in a tamper-evident trail.
"""

__version__ = "0.1.0"

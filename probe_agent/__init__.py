"""Blockwatch probe: measures fediverse instances (DNS, TCP, TLS, HTTP) for signs of blocking.

The probe is the first stage of the data flow: it measures each target, turns every
step into a flat observation (failures normalized once, in `failures`), derives local
hints that need no control (`hints`), and prints or submits the result.
"""

__version__ = "0.1.0"

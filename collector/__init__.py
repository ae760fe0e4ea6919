"""Blockwatch collector: verifies, stores and analyses probe measurements, and alerts admins."""

__version__ = "0.1.0"

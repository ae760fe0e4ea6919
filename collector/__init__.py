"""Blockwatch collector: verifies, stores and analyzes probe measurements, and alerts admins.

Its rooms, from the top down (each imports only the rooms below it;
pyproject.toml ``[tool.importlinter]``): ``cli``, ``api`` (thin routes),
``detection`` (the pass, the control prober, the background loops; its
``machine`` is pure), ``services`` (ingestion, probes, targets, subscriptions,
events, geolocation, imports), ``alerts`` (the outbox and its channels),
``netsafety`` (the one guard for outbound requests), ``analysis`` (the pure
verdict), ``core`` (settings, database, models, errors, metrics, clock). From
the probe it imports only ``probe_agent.protocol`` and ``probe_agent.measure``.
"""

__version__ = "0.1.0"

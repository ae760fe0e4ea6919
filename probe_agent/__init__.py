"""Blockwatch probe: measures fediverse instances (DNS, TCP, TLS, HTTP) for signs of blocking.

The probe is the first stage of the data flow. Its rooms, from the bottom up
(each imports only the rooms below it; pyproject.toml ``[tool.importlinter]``):

- ``protocol``: what the probe and the collector share: the signed envelope, the
  measurement document, input validation, the vocabulary of failures and hints,
  the classification of addresses, the time format;
- ``measure``: the engine (one flow per address: DNS, TCP, TLS with a decoy SNI,
  HTTP), failures normalized once, local hints, worker processes;
- ``state``: the probe's files in ``--state-dir`` (key, ``state.json``, spool),
  each with one owner;
- ``daemon``: the volunteer's daemon: one round, the loop, the collector client,
  key rotation, scrubbing the probe's own addresses;
- ``cli``: ``blockwatch-probe``.
"""

__version__ = "0.1.0"

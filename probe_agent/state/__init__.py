"""The probe's state on disk, in ``--state-dir``: one owner per file.

``files`` (the directory, its modes, atomic writes), ``identity`` (the key
files and ``state.json``), ``spool`` (the durable queue of signed
measurements), ``status`` (health for ``status`` and the container's
HEALTHCHECK), ``wipe`` (removing it all). Imports only ``probe_agent.protocol``.
"""

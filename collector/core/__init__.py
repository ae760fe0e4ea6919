"""What every room of the collector stands on.

``settings`` (the one pydantic-settings class, ``BLOCKWATCH_*``), ``db``
(engine, sessions, migrations), ``models`` (ORM rows, ``...Row``), ``errors``
(the error tree with stable codes), ``metrics`` (every Prometheus metric),
``clock`` (wall time behind a protocol). Imports no other room.
"""

"""The HTTP API: the FastAPI app, its dependencies, schemas and thin routes.

``app`` (lifespan: settings, engine, session factory, geolocator and the
background loops made once; body limit; error rendering), ``deps`` (what routes
receive), ``schemas`` (what routes accept and answer, never ORM rows),
``routes/`` (one module a resource: parse, call a service, map the answer).
Logic and writes live in ``collector.services``.
"""

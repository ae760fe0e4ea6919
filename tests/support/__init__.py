"""Real servers on loopback for integration tests and demos: no packet leaves the machine.

Where this sits in the data flow: these servers play the network a volunteer's probe
measures (resolvers, an on-path DNS injector, Mastodon instances, an SNI filter and
broken TLS/HTTP servers), so that the engine is tested through real socket events.

- ``pki``: a test CA (trusted through ``--ca-file``), a second untrusted CA, leaf
  certificates (valid, expired, for the wrong name, huge);
- ``dns_server``: a UDP+TCP resolver with one behaviour per name, and an injector;
- ``tls_servers``: an instance server with one behaviour (Mastodon API, resets,
  silence, bad certificates, trickling or endless bodies, an SNI filter);
- ``simnet``: all of the above wired together on 127.0.0.0/8.
"""

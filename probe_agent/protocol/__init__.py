"""What the probe and the collector share: the wire format and its vocabulary.

``envelope`` (the signed envelope, the one wire format), ``document`` (the
signed measurement document), ``inputs`` (validation of names, endpoints,
networks, durations), ``errors`` (the probe's exception tree), ``times`` (the
RFC 3339 format of every time on the wire), ``addresses`` (one classification
of addresses), ``vocabulary`` (failures and hints), ``evidence`` (the evidence
bundle and its offline verification). Nothing here imports another room
of the probe: the collector may import all of it.
"""

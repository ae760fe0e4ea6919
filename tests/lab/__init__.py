"""The censorship lab: real simulated censors in network namespaces (docs/lab.md)."""

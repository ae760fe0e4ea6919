"""The project's tests: unit tests mirror the packages; ``tests.support`` runs real servers."""

"""One module per resource: each route parses, calls a service, and maps the answer."""

"""What answers a request: the bundle's scorer, the popularity fallback, the routing service."""

"""Ground-station side: server, strategies, model store, service."""

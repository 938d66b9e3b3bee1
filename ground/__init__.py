"""Ground-station side: the ground state machine, its durable store, aggregation strategies,
metrics, and the ground daemon that drives them."""

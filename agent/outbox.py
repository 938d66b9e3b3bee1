"""The agent's outbox lives in the base layer now (orbitfl.runtime.outbox), where the ground's
stations use it too for their store-and-forward link; this name stays for existing imports."""

from orbitfl.runtime.outbox import MIGRATIONS, SCHEMA, SCHEMA_VERSION, Outbox, OutboxItem

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "Outbox", "OutboxItem"]

"""Board side: trainer, onboard inference, codec use, outbox, link, service."""

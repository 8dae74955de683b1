"""byzrsa on Flower: the ServerApp and ClientApp of ``flwr run examples/flower`` (see docs/flower.md)."""

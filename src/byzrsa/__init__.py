"""byzrsa: Byzantine-robust stochastic aggregation (RSA) and robust baselines."""

"""The ServerApp: RSA's master (or a robust-aggregation server) as the run config says."""

from byzrsa.engines.flower import server_app

app = server_app()

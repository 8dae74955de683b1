"""The ClientApp: one byzrsa worker per SuperNode, its iterate kept in the node's context.state."""

from byzrsa.engines.flower import client_app

app = client_app()

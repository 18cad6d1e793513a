"""The control plane: REST API, services, database and reconcilers."""

"""Reconcilers: loops that move observed state toward the desired state in the database."""

"""The gateway: the one door from clients to deployment replicas.

It runs as its own process (``python -m kaon.gateway``), gets its routes from the control
plane, balances requests over ready replicas, holds requests while a deployment scales from
zero, and reports the load it sees so the autoscaler can act. The autoscaling policy itself
is the pure function `kaon.gateway.autoscale.decide`, which the control plane imports; this
package's ``__init__`` imports nothing so that doing so stays cheap.
"""

"""The gateway: the one door from clients to deployment replicas.

It runs as its own process (``python -m kaon.gateway``), gets its routes from the control
plane, balances requests over ready replicas, holds requests while a deployment scales from
zero, and reports the load it sees so the autoscaler can act. The autoscaling policy that
acts on those reports is the control plane's (`kaon.autoscaling`); the gateway never
imports the control plane, only the protocol both speak (`kaon.core.gateway`).
"""

"""``python -m kaon.server``: run the control plane in the foreground."""

from kaon.server.serve import main

main()

"""Executors: the one seam between Kaon and the processes it runs (see `base.py`)."""

"""The version of Kaon, in a module of its own so that any part can read it without
importing the package's lazy exports."""

__version__ = "0.1.0"

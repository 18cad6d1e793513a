"""HTTP routers: parse, authorize, call one service, return a core model."""

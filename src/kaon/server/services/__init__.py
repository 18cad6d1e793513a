"""Services hold the rules and own the transaction. Routers call exactly one of them."""

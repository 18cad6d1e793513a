"""Who is calling, and what they hold: bearer tokens, the caller's identity, and the key
that derives each job attempt's own token. Storage and comparison of tokens by their
SHA-256 is shared with the gateway (`kaon.core.tokens`)."""

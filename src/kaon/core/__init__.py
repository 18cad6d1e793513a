"""The words every part of Kaon shares: specs, states, errors, resource arithmetic. No I/O."""

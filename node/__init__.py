"""The running node: identity (keys), chain rules, and (later) membership and services."""

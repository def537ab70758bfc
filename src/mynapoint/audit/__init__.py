"""Audit: an append-only, hash-chained log of every state change, written in the same transaction."""

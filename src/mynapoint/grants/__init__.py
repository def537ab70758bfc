"""Grants: the points each provider must give each resident, computed by the rules engine, posted once."""

"""The points ledger: double-entry and append-only. Entries are inserted by ledger.services only."""

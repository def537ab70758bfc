"""Settlement: the providers' monthly claims (概算払) and final settlement (精算), from the ledger; statements
as CSV and PDF; and the reconciliation of a provider's own list of grants against the ledger."""

"""Benchmarks that print figures (make bench) and the synthetic populations they run on."""

"""Programme scenarios: the shared conformance format (../shared/docs/scenarios.md), loaded and run."""

"""The serving data plane: one URL for every InferenceService, nearest-region routing, failover, spillover and an
activator that holds requests while a region scales from zero (`modelfleet gateway`)."""

"""InferenceService: manifest builders, the autoscaler, load observation, status, and the kopf handlers."""

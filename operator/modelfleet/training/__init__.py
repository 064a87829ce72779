"""TrainingJob: manifest builders, gang lifecycle decisions, status, and the kopf handlers."""

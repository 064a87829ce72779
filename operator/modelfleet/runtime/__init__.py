"""What runs inside pods: the distributed training worker (train) and the model server (serve). Needs torch."""

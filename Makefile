.PHONY: demo test unit crds lint cluster-up cluster-down bench

# Brings up the local cluster, installs modelfleet and runs an example.
demo:
	bash hack/demo.sh

# Runs every test (lint, unit, e2e against a real control plane, runtime processes).
test:
	bash hack/test.sh

unit:
	bash hack/test.sh tests/unit

crds:
	bash -c 'source hack/env.sh && python -m modelfleet.crdgen'

cluster-up:
	bash -c 'source hack/env.sh && modelfleet dev-cluster up'

cluster-down:
	bash -c 'source hack/env.sh && modelfleet dev-cluster down'

# Benchmarks (figures and peer ratios; not tests). QUICK=1 for a short run.
bench:
	bash -c 'source hack/env.sh && python -m benchmarks $(if $(QUICK),--quick,)'

"""``abbild-registry``: the image metadata registry as a private HTTP service, for
deployments that keep the database away from the API nodes (DESIGN.md section 2)."""

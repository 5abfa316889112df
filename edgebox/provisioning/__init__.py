"""Getting boxes into the fleet: service units, provisioning over SSH."""

"""Provisioning: the hub's SSH relay files, the node's tunnel to the hub, the laptop's
ssh_config for `edgebox ssh`, the node's service units, and `edgebox provision` over SSH."""

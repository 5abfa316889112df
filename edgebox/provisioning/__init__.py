"""Provisioning: the hub's SSH relay files, the node's tunnel to the hub, and the laptop's
ssh_config for `edgebox ssh`."""

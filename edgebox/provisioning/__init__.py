"""Provisioning: the laptop's ssh_config for `edgebox ssh`, the node's service units, and
`edgebox provision` over SSH. It sits above the fleet (it uses the hub client and the relay's
key material); the relay's sshd files and the tunnel supervisor are fleet concerns
(`fleet.relay`, `fleet.tunnel`)."""

"""The CLI's commands, one module each, registered in edgebox/cli.py."""

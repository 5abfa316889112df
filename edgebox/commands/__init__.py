"""One module per `edgebox` subcommand, each exposing `register(app)`."""

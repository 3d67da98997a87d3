"""One module per ``symgrad`` subcommand (see ``symgrad.cli``)."""

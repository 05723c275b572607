"""Jobs: one function per subcommand, from a validated config to files on disk (the CLI's single call)."""

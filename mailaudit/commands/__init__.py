"""One module per CLI verb: HELP, configure(parser), run(args, cfg) -> exit code."""

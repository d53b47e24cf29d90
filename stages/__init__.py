"""One module per pipeline stage; each has NAME, SECTIONS, UPSTREAM and run(ctx), and
optionally upstream(cfg) and sections(cfg) where they depend on the config."""

"""One module per pipeline stage; each has NAME, SECTIONS, UPSTREAM, VERSION and run(ctx)."""

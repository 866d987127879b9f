"""Input service: opens a source read-only, one NBD socket per disk behind an overlay."""

"""Copier service: nbdcopy from each source NBD socket to its target, with progress."""

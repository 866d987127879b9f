"""Phony Windows guests and a fake virtio-win for the Windows conversion tests: see README.md."""

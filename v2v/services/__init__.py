"""The four phase services: input, convert, output, copier."""

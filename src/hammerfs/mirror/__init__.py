"""Mirroring: the stream format, reader, writer and transports (layer 4)."""

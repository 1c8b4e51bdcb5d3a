"""The `hammer` command line (an adapter: it sits on top of every other layer)."""

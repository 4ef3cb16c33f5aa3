"""The tools every file trainsim reads is validated with: a hardened YAML loader that keeps
line numbers (``loader``), a reader that turns located values into typed ones and collects
every mistake (``fields``), and declarations of the kinds a file can name (``kinds``)."""

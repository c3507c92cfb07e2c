"""Start daemons from Python."""

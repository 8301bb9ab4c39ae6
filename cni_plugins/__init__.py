"""CNI plugins in Python: protocol core, link helpers and one module per plugin executable."""

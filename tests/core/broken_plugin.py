"""A plugin module whose import fails."""

raise ImportError("libfoo.so: cannot open shared object file")

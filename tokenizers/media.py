"""Media I/O placeholder being written."""

"""Messages: the send path and the status lookup."""

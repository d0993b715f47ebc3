"""Access nodes: hold client WebSockets, verify tickets, register with load, drain, and host
the message core."""

"""The only package that owns sockets, capture, namespaces and firewall rules."""

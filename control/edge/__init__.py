"""The edge: the L4 load balancer (HAProxy) in front of the access nodes, its configuration
rendered from the node registry and kept current."""

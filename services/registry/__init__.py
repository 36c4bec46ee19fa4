"""The registry service: sites and devices, their labels, metadata and lifecycle (DESIGN §1)."""

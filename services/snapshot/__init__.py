"""The snapshot service: immutable, content-addressed, versioned configuration (DESIGN §1, §5)."""

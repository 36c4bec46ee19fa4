"""NATS identities (DESIGN §11): decentralised JWT mode (operator -> accounts -> users) with nkeys,
the role table as data, the authority that issues and revokes identities, and the rule that turns
a request's server-stamped identity into the `actor` of the events it causes."""

"""Discord cogs: thin adapters from interactions to the core services."""

"""Config: the registry every config group is built through, and config identity."""

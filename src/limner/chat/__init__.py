"""The chat agent: the LLM connection, the agent loop, conversations and the vision handoff policy."""

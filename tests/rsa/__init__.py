"""Recursive Self-Aggregation: the engine, its metrics, the synthetic testbed, the LLM adapter."""

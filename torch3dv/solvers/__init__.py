"""Minimal and linear geometric solvers, one module per problem (batched, masked, differentiable)."""

"""Sequences: HMM filtering, Bayesian oracles over task families, next-token predictors."""

"""Learned models: sequence blocks (`wmenv.models.ssm`) and, built on them, the world models."""

"""Quantization algorithms written once for every format: each file holds one config and one algorithm that speaks
only to a backend (../backends), registered for the formats it accepts and under its older per-format names."""

"""Latency and throughput of one session on one input shape: warm-up, a minimum count and a minimum duration.

A leaf: takes a session and inputs, returns a record. Speed-ups are computed by the caller from two records measured
in the same process run.
"""
from .inputs import benchmark_inputs
from .latency import LatencyScenario, Measurement, measure_latency
from .memory import RssSampler
from .throughput import ThroughputScenario, measure_throughput

__all__ = ["LatencyScenario", "Measurement", "RssSampler", "ThroughputScenario", "benchmark_inputs", "measure_latency",
           "measure_throughput"]

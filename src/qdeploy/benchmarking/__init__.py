"""Latency and throughput of one session on one input shape: warm-up, a minimum count and a minimum duration.

A leaf: takes a session and inputs, returns a record. Speed-ups are computed by the caller from two records measured
in the same process run.
"""
from .end_to_end import END_TO_END, TIMINGS, measure_end_to_end, measure_timings
from .inputs import BenchCase, benchmark_case, benchmark_inputs, benchmark_texts
from .latency import MODEL_ONLY, LatencyScenario, Measurement, measure_latency, measure_session
from .memory import RssSampler
from .throughput import (ThroughputScenario, measure_async_throughput, measure_concurrent, measure_throughput,
                         throughput_runner)

__all__ = ["END_TO_END", "MODEL_ONLY", "TIMINGS", "BenchCase", "LatencyScenario", "Measurement", "RssSampler",
           "ThroughputScenario", "benchmark_case", "benchmark_inputs", "benchmark_texts", "measure_async_throughput",
           "measure_concurrent", "measure_end_to_end", "measure_latency", "measure_session", "measure_throughput",
           "measure_timings", "throughput_runner"]

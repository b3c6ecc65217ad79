"""What a caller with raw text waits for: tokenization of the real texts, the model, the outputs back on the host."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from .inputs import BenchCase, tokenize
from .latency import MODEL_ONLY, LatencyScenario, Measurement, measure_session, summarize, time_calls

END_TO_END = "end to end (tokenization of the raw texts inside the timed loop, then the model; outputs on the host)"


def measure_end_to_end(session, case: BenchCase, scenario: LatencyScenario,
                       tick: Callable[[], None] | None = None) -> Measurement:
    def call(texts: list[str]):
        return session.run(tokenize(case.tokenizer, texts, case.input_names, case.seq_len))

    ms = time_calls(call, case.texts, scenario, tick)
    return summarize(ms, case.batch, case.seq_len, scenario, END_TO_END, "end-to-end")


@dataclass(frozen=True)
class Timing:
    """One thing a latency measurement can time; the plan's `timing` list names these."""
    name: str
    what: str
    measure: Callable[..., Measurement]  # (session, case, scenario) -> Measurement


TIMINGS: Registry[Timing] = Registry("timing")
for _timing in (Timing("model", MODEL_ONLY, lambda session, case, scenario: measure_session(session, case.inputs,
                                                                                            scenario)),
                Timing("end-to-end", END_TO_END, measure_end_to_end)):
    TIMINGS.register(_timing.name)(_timing)


def measure_timings(session, case: BenchCase, scenario: LatencyScenario, names: tuple[str, ...] | list[str]
                    ) -> dict[str, Measurement]:
    return {name: TIMINGS.get(name).measure(session, case, scenario) for name in names}

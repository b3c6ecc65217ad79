"""Property-based: malformed plans and option strings always give a clean QdeployError, never a crash."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy import plan as plans
from qdeploy import quantization
from qdeploy.config import parse_options
from qdeploy.errors import QdeployError

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)
keys = st.sampled_from(list(plans.Plan.__dataclass_fields__) + ["schema", "bogus", "calibration", "methods", "eval"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_plan_dicts_parse_or_fail_cleanly(data):
    try:
        plan = plans.from_dict(data)
    except QdeployError:
        return
    assert plans.from_dict(plan.to_dict()) == plan  # whatever parses, round-trips


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_plan_files_parse_or_fail_cleanly(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            plans.load(path)
        except QdeployError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["ort-dynamic", "ort-static", "nncf-ptq", "nncf-weight-int8"]),
       st.lists(st.text(max_size=30), max_size=4))
def test_option_strings_parse_or_fail_cleanly(method, pairs):
    try:
        quantization.make_config(method, parse_options(pairs))
    except QdeployError:
        pass


@given(st.sampled_from(["true", "1", "yes", "on"]))
def test_booleans_from_strings(value):
    assert quantization.make_config("ort-static", {"per_channel": value}).per_channel is True




def test_numbered_choices_parse_from_the_command_line():
    """`--option accuracy_level=4` arrives as text; a Literal[0, ..., 4] option takes it as the number it names."""
    assert quantization.make_config("weight-int4", parse_options(["accuracy_level=4"])).accuracy_level == 4
    assert quantization.make_config("weight-int4", parse_options(["head_bits=4"])).head_bits == 4
    with pytest.raises(QdeployError, match="one of 4, 8"):
        quantization.make_config("weight-int4", parse_options(["head_bits=3"]))

"""checks: levels, thresholds and value matchers, with the exact sentences reports show."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from cxtest.checks import ABSENT, Match, ValueMatch, judge_levels, judge_match, judge_thresholds, show
from cxtest.model import Levels, Outcome

# --------------------------------------------------------------------------- levels

LATENCY = Levels(degraded=0.3, failed=0.5)
TLS = Levels(degraded=30, failed=7)


@pytest.mark.parametrize(
    ("value", "outcome", "text"),
    [
        (0.1, Outcome.passed, "latency (100ms) <= 300ms"),
        (0.3, Outcome.passed, "latency (300ms) <= 300ms"),
        (0.4, Outcome.degraded, "latency (400ms) > 300ms (degraded level)"),
        (0.812, Outcome.failed, "latency (812ms) > 500ms"),
    ],
)
def test_levels_lower_is_better(value: float, outcome: Outcome, text: str) -> None:
    """Latency: larger is worse; past degraded -> degraded, past failed -> failed, a limit itself still passes."""
    check = judge_levels("latency", value, LATENCY)
    assert (check.name, check.outcome, check.text) == ("latency", outcome, text)
    assert check.expected == {"degraded": 0.3, "failed": 0.5}
    assert check.actual == value


@pytest.mark.parametrize(
    ("value", "outcome", "text"),
    [
        (90, Outcome.passed, "tls_days_left (90) >= 30"),
        (20, Outcome.degraded, "tls_days_left (20) < 30 (degraded level)"),
        (5, Outcome.failed, "tls_days_left (5) < 7"),
    ],
)
def test_levels_higher_is_better(value: float, outcome: Outcome, text: str) -> None:
    """tls_days_left: smaller is worse, and the sentence uses < and >= instead of > and <=."""
    check = judge_levels("tls_days_left", value, TLS)
    assert (check.outcome, check.text) == (outcome, text)
    assert check.expected == {"degraded": 30, "failed": 7}
    assert check.actual == value


def test_levels_with_one_limit_or_none() -> None:
    """With only a failed level the pass sentence names it; with no level the sentence is just the value."""
    assert judge_levels("latency", 0.1, Levels(failed=2)).text == "latency (100ms) <= 2s"
    bare = judge_levels("latency", 0.1, Levels())
    assert (bare.outcome, bare.text, bare.expected) == (Outcome.passed, "latency (100ms)", {})


def test_levels_label_names_the_check() -> None:
    """A label replaces the measure name in the check name and sentence, but not in the units."""
    check = judge_levels("latency", 0.9, LATENCY, label="step 2 latency")
    assert (check.name, check.text) == ("step 2 latency", "step 2 latency (900ms) > 500ms")


def test_thresholds_judge_present_measures_and_fail_missing_ones() -> None:
    """judge_thresholds judges recorded measures and fails a measure the run never recorded."""
    checks = judge_thresholds(
        {"duration": Levels(degraded=1.0), "tls_days_left": Levels(degraded=30)},
        {"duration": 1.5, "latency": 0.2},
    )
    duration, tls = checks
    assert (duration.outcome, duration.text) == (Outcome.degraded, "duration (1.5s) > 1s (degraded level)")
    assert tls.outcome is Outcome.failed
    assert tls.text == "tls_days_left was not measured in this run"
    assert tls.actual is ABSENT


# --------------------------------------------------------------------------- value matchers


def one(label: str, actual, **expectations) -> tuple[Outcome, str]:
    [check] = judge_match(label, actual, Match(**expectations))
    return check.outcome, check.text


def test_equals_coerces_between_text_and_numbers() -> None:
    """equals treats '1001' and 1001 as the same value, both ways, and says what it saw."""
    assert one("$.id", "1001", equals=1001) == (Outcome.passed, "$.id ('1001') == 1001")
    assert one("$.id", 1001, equals="1001") == (Outcome.passed, "$.id (1001) == '1001'")
    assert one("$.id", "1002", equals=1001) == (Outcome.failed, "$.id ('1002') == 1001")
    assert one("status", 503, equals=200) == (Outcome.failed, "status (503) == 200")


def test_equals_keeps_booleans_apart_from_numbers_and_text() -> None:
    """A JSON true is not 1 and not 'True', whichever side it is on."""
    assert one("x", True, equals=1)[0] is Outcome.failed
    assert one("x", 1, equals=True)[0] is Outcome.failed
    assert one("x", "True", equals=True)[0] is Outcome.failed
    assert one("x", True, equals="True")[0] is Outcome.failed
    assert one("x", True, equals=True)[0] is Outcome.passed
    assert one("x", False, equals=False)[0] is Outcome.passed


def test_equals_none_and_absent() -> None:
    """equals: null matches a JSON null but not a missing value."""
    assert one("$.balance", None, equals=None) == (Outcome.passed, "$.balance (None) == None")
    assert one("$.balance", ABSENT, equals=None) == (Outcome.failed, "$.balance (absent) == None")


def test_not_equals() -> None:
    """not_equals fails when the value is the same (with the same coercion as equals)."""
    assert one("$.status", "active", not_equals="suspended") == (Outcome.passed, "$.status ('active') != 'suspended'")
    assert one("$.id", "7", not_equals=7) == (Outcome.failed, "$.id ('7') != 7")


def test_contains_and_not_contains() -> None:
    """contains / not_contains look in the value's text; an absent value fails both."""
    assert one("body", "invalid credentials", contains="invalid") == (
        Outcome.passed,
        "body ('invalid credentials') contains 'invalid'",
    )
    assert one("body", 12345, contains="234")[0] is Outcome.passed
    assert one("body", "all good", contains="error") == (Outcome.failed, "body ('all good') contains 'error'")
    assert one("body", ABSENT, contains="x") == (Outcome.failed, "body (absent) contains 'x'")
    assert one("body", "all good", not_contains="error") == (Outcome.passed, "body ('all good') does not contain 'error'")
    assert one("body", "an error", not_contains="error")[0] is Outcome.failed
    assert one("body", ABSENT, not_contains="error")[0] is Outcome.failed


def test_matches_searches_anywhere() -> None:
    """matches is a regular-expression search, anchored only if the pattern says so."""
    assert one("header x", "req-1234", matches=r"\d{4}") == (Outcome.passed, r"header x ('req-1234') matches '\\d{4}'")
    assert one("header x", "req-1234", matches=r"^\d")[0] is Outcome.failed
    assert one("header x", ABSENT, matches=".*")[0] is Outcome.failed


def test_bad_regex_is_refused_when_the_match_is_built() -> None:
    """A bad regular expression is a validation error naming the pattern, not a crash at run time."""
    with pytest.raises(ValidationError, match=r"bad regular expression '\('"):
        Match(matches="(")


def test_one_of() -> None:
    """one_of passes when any listed value is the same, with text/number coercion."""
    assert one("$.currency", "EUR", one_of=["EUR", "USD"]) == (Outcome.passed, "$.currency ('EUR') in ['EUR', 'USD']")
    assert one("status", "201", one_of=[200, 201])[0] is Outcome.passed
    assert one("$.currency", "GBP", one_of=["EUR", "USD"])[0] is Outcome.failed


def test_exists_true_and_false() -> None:
    """exists: true fails on ABSENT (and says so); exists: false passes only on ABSENT."""
    assert one("$.token", "abc", exists=True) == (Outcome.passed, "$.token exists")
    assert one("$.token", ABSENT, exists=True) == (Outcome.failed, "$.token exists (absent)")
    assert one("$.error", ABSENT, exists=False) == (Outcome.passed, "$.error is absent")
    assert one("$.error", "boom", exists=False) == (Outcome.failed, "$.error is absent ('boom')")
    assert one("$.value", None, exists=True)[0] is Outcome.passed  # a JSON null is present


@pytest.mark.parametrize(
    ("op", "limit", "good", "bad", "sign"),
    [("gt", 0, 1, 0, ">"), ("ge", 60, 60, 59.5, ">="), ("lt", 10, 9, 10, "<"), ("le", 10, 10, 10.5, "<=")],
)
def test_number_comparisons(op: str, limit: float, good: float, bad: float, sign: str) -> None:
    """gt/ge/lt/le compare numbers (numeric text too); the sentence shows value, sign and limit."""
    assert one("$.n", good, **{op: limit}) == (Outcome.passed, f"$.n ({good!r}) {sign} {limit:g}")
    assert one("$.n", str(good), **{op: limit})[0] is Outcome.passed
    assert one("$.n", bad, **{op: limit}) == (Outcome.failed, f"$.n ({bad!r}) {sign} {limit:g}")


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
@pytest.mark.parametrize("actual", ["abc", None, True, ABSENT, [1], {"a": 1}])
def test_number_comparisons_fail_on_non_numbers(op: str, actual) -> None:
    """A value that is not a number (text, null, a boolean, absent, a list) fails every comparison."""
    outcome, _ = one("$.n", actual, **{op: 0})
    assert outcome is Outcome.failed


def test_length() -> None:
    """length counts text, list and mapping sizes; anything else is n/a and fails."""
    [check] = judge_match("$.items", [1, 2, 3], Match(length=3))
    assert (check.name, check.outcome, check.text) == ("len($.items)", Outcome.passed, "len($.items) (3) == 3")
    assert (check.expected, check.actual) == (3, 3)
    [short] = judge_match("$.name", "ab", Match(length=3))
    assert (short.outcome, short.text) == (Outcome.failed, "len($.name) (2) == 3")
    [none] = judge_match("$.n", 5, Match(length=1))
    assert (none.outcome, none.text, none.actual) == (Outcome.failed, "len($.n) (n/a) == 1", None)
    assert judge_match("$.m", {"a": 1, "b": 2}, Match(length=2))[0].outcome is Outcome.passed


def test_every_expectation_is_its_own_check() -> None:
    """Several expectations on one value give one CheckResult each, in a stable order."""
    checks = judge_match("$.balance", 12.5, Match(exists=True, ge=0, lt=100, one_of=[12.5]))
    assert [c.text for c in checks] == [
        "$.balance exists",
        "$.balance (12.5) in [12.5]",
        "$.balance (12.5) >= 0",
        "$.balance (12.5) < 100",
    ]
    assert all(c.outcome is Outcome.passed for c in checks)


def test_check_results_keep_expected_and_actual() -> None:
    """Each CheckResult keeps the expected value and the value actually seen, not just the sentence."""
    cases = [
        (Match(equals=200), 503, 200),
        (Match(not_equals="x"), "x", "x"),
        (Match(contains="up"), "down", "up"),
        (Match(not_contains="err"), "err", "err"),
        (Match(matches="^a"), "b", "^a"),
        (Match(one_of=["EUR"]), "GBP", ["EUR"]),
        (Match(exists=True), ABSENT, True),
        (Match(gt=5), 1, 5),
        (Match(ge=5), 1, 5),
        (Match(lt=0), 1, 0),
        (Match(le=0), 1, 0),
    ]
    for match, actual, expected in cases:
        [check] = judge_match("v", actual, match)
        assert check.outcome is Outcome.failed, match
        assert check.expected == expected, match
        assert check.actual is actual or check.actual == actual, match


# --------------------------------------------------------------------------- shorthand

VALUE_MATCH = TypeAdapter(ValueMatch)


def test_shorthand_bare_value_means_equals() -> None:
    """In YAML a bare value is `equals`; a falsy value or null is still an equals expectation."""
    assert VALUE_MATCH.validate_python("up") == Match(equals="up")
    assert VALUE_MATCH.validate_python(0).model_fields_set == {"equals"}
    null = VALUE_MATCH.validate_python(None)
    assert null.model_fields_set == {"equals"} and null.equals is None


def test_shorthand_list_means_one_of() -> None:
    """In YAML a list is `one_of`."""
    assert VALUE_MATCH.validate_python(["EUR", "USD"]) == Match(one_of=["EUR", "USD"])


def test_shorthand_mapping_of_operators_or_of_data() -> None:
    """A mapping with operator keys is a Match; a mapping of other keys is a value to equal."""
    assert VALUE_MATCH.validate_python({"ge": 0, "lt": 10}) == Match(ge=0, lt=10)
    assert VALUE_MATCH.validate_python({"billing": "up"}) == Match(equals={"billing": "up"})
    with pytest.raises(ValidationError):
        VALUE_MATCH.validate_python({"ge": 0, "bogus": 1})


def test_shorthand_leaves_a_match_alone() -> None:
    """A Match given in code is used as it is, not wrapped into `equals: Match(...)`."""
    assert VALUE_MATCH.validate_python(Match(lt=5)) == Match(lt=5)


def test_show_truncates_long_values_cleanly() -> None:
    """Long values are cut with an ellipsis; only a cut string keeps its closing quote."""
    assert show(ABSENT) == "absent"
    assert show("x" * 100, limit=10) == "'xxxxxxxx…'"
    assert show(list(range(100)), limit=10) == "[0, 1, 2,…"

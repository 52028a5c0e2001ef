"""Option declarations: converting env-style text, bounds, choices, defaults and error text."""

from __future__ import annotations

import math

import pytest

from sqs_processor.errors import ConfigError
from sqs_processor.options import REQUIRED, Option, suggest, validate_options

KEY = "block.opt"


def _reject(option: Option, value: object, problem: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        option.convert(value, KEY)
    error = info.value
    assert error.key == KEY
    assert problem in error.problem
    return error


# --------------------------------------------------------------------------------------------
# Type coercion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        (int, "10", 10),
        (int, " 7 ", 7),
        (int, "-3", -3),
        (int, 42, 42),
        (float, "1.5", 1.5),
        (float, " 0.25 ", 0.25),
        (float, "3", 3.0),
        (float, 2, 2.0),
        (float, 2.5, 2.5),
        (str, "text", "text"),
        (list, ["a", 1], ["a", 1]),
        (dict, {"a": 1}, {"a": 1}),
    ],
)
def test_env_style_text_and_native_values_convert_to_the_declared_type(kind, raw, expected):
    result = Option("opt", kind, None).convert(raw, KEY)
    assert result == expected
    assert type(result) is kind


@pytest.mark.parametrize("raw", ["true", "True", " TRUE ", "yes", "on", "1", True])
def test_truthy_words_convert_to_true_for_a_bool_option(raw):
    assert Option("opt", bool, None).convert(raw, KEY) is True


@pytest.mark.parametrize("raw", ["false", "False", "no", "NO", "off", "0", False])
def test_falsy_words_convert_to_false_for_a_bool_option(raw):
    assert Option("opt", bool, None).convert(raw, KEY) is False


@pytest.mark.parametrize("raw", ["maybe", "", "truthy", "2", [True]])
def test_a_bool_option_rejects_anything_but_a_bool_or_a_boolean_word(raw):
    error = _reject(Option("opt", bool, None), raw, "has the wrong type")
    assert error.expected == "true or false"


@pytest.mark.parametrize("raw", [True, False])
def test_a_bool_is_not_accepted_as_an_integer(raw):
    error = _reject(Option("opt", int, None), raw, "has the wrong type")
    assert error.value is raw


def test_a_bool_is_not_accepted_as_a_number():
    _reject(Option("opt", float, None), True, "has the wrong type")


@pytest.mark.parametrize("raw", ["1.5", "ten", "", "0x10", 1.5, 3.0, [1], {"n": 1}])
def test_an_integer_option_rejects_text_and_values_that_are_not_whole_integers(raw):
    error = _reject(Option("opt", int, None), raw, "has the wrong type")
    assert error.expected == "an integer"


@pytest.mark.parametrize(
    "raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", math.nan, math.inf, -math.inf]
)
def test_a_number_option_rejects_nan_and_infinity(raw):
    error = _reject(Option("opt", float, None), raw, "has the wrong type")
    assert error.expected == "a number"


@pytest.mark.parametrize("raw", ["abc", "", "1,5", [1.0]])
def test_a_number_option_rejects_text_that_is_not_a_number(raw):
    _reject(Option("opt", float, None), raw, "has the wrong type")


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [(str, 5, "a string"), (str, ["a"], "a string"), (list, "a,b", "a list"),
     (dict, "a=1", "a mapping"), (dict, ["a"], "a mapping")],
)
def test_structured_and_text_options_reject_other_types(kind, raw, expected):
    error = _reject(Option("opt", kind, None), raw, "has the wrong type")
    assert error.expected == expected


# --------------------------------------------------------------------------------------------
# Bounds and choices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [1, "1", 10, "10", 5])
def test_integer_bounds_are_inclusive(raw):
    assert Option("opt", int, 5, minimum=1, maximum=10).convert(raw, KEY) == int(raw)


@pytest.mark.parametrize("raw", [0, "0", -1, 11, "11", 10**30])
def test_integers_outside_the_bounds_are_rejected(raw):
    error = _reject(Option("opt", int, 5, minimum=1, maximum=10), raw, "is out of range")
    assert error.value == raw
    assert error.expected == "an integer from 1 to 10"


@pytest.mark.parametrize(("raw", "expected"), [("0.1", 0.1), (0.1, 0.1), ("300", 300.0)])
def test_number_bounds_are_inclusive(raw, expected):
    assert Option("opt", float, 1.0, minimum=0.1, maximum=300).convert(raw, KEY) == expected


@pytest.mark.parametrize("raw", ["0.09", 0, "-1", "300.01", 301])
def test_numbers_outside_the_bounds_are_rejected(raw):
    error = _reject(Option("opt", float, 1.0, minimum=0.1, maximum=300), raw, "is out of range")
    assert error.expected == "a number from 0.1 to 300"


def test_a_lower_bound_alone_is_enforced_and_described():
    option = Option("opt", int, 1, minimum=1)
    assert option.convert(10**9, KEY) == 10**9
    error = _reject(option, 0, "is out of range")
    assert error.expected == "an integer of at least 1"


def test_an_upper_bound_alone_is_enforced_and_described():
    option = Option("opt", float, 1.0, maximum=5)
    assert option.convert(-100, KEY) == -100.0
    error = _reject(option, 5.5, "is out of range")
    assert error.expected == "a number of at most 5"


def test_a_value_among_the_choices_is_accepted():
    option = Option("opt", str, "sent", choices=("sent", "received"))
    assert option.convert("received", KEY) == "received"
    assert option.convert("sent", KEY) == "sent"


@pytest.mark.parametrize("raw", ["Sent", "recieved", "", " sent"])
def test_a_value_outside_the_choices_is_rejected_listing_them(raw):
    option = Option("opt", str, "sent", choices=("sent", "received"))
    error = _reject(option, raw, "is not allowed")
    assert error.value == raw
    assert error.expected == "one of 'sent', 'received'"


# --------------------------------------------------------------------------------------------
# Required, optional and defaulted options
# --------------------------------------------------------------------------------------------


def test_an_option_without_a_default_is_required():
    option = Option("opt", str)
    assert option.default is REQUIRED
    assert option.required
    assert "is required" in _reject(option, None, "is required").problem


def test_an_option_with_default_none_is_optional_and_stays_unset():
    option = Option("opt", int, None, minimum=0)
    assert not option.required
    assert option.convert(None, KEY) is None
    assert validate_options([option], {}, "block") == {"opt": None}


def test_an_option_with_a_default_may_not_be_set_to_empty():
    option = Option("opt", int, 10)
    assert not option.required
    _reject(option, None, "may not be empty")


def test_validate_options_fills_in_defaults_and_converts_given_values():
    options = (
        Option("count", int, 10, minimum=1),
        Option("name", str),
        Option("flag", bool, True),
        Option("ratio", float, None),
    )
    result = validate_options(options, {"count": "3", "name": "x"}, "source")
    assert result == {"count": 3, "name": "x", "flag": True, "ratio": None}


def test_validate_options_accepts_no_block_when_nothing_is_required():
    assert validate_options((Option("n", int, 2),), None, "ack") == {"n": 2}


def test_a_missing_required_option_is_named_by_its_dotted_key():
    with pytest.raises(ConfigError) as info:
        validate_options((Option("bucket", str),), {}, "sink")
    assert info.value.key == "sink.bucket"
    assert str(info.value) == "sink.bucket: is required; expected a string"


def test_a_bad_value_is_reported_under_the_blocks_dotted_key():
    options = (Option("max_messages", int, 10, minimum=1, maximum=10),)
    with pytest.raises(ConfigError) as info:
        validate_options(options, {"max_messages": "11"}, "transforms[2]")
    assert info.value.key == "transforms[2].max_messages"


# --------------------------------------------------------------------------------------------
# Unknown keys and suggestions
# --------------------------------------------------------------------------------------------


SINK_OPTIONS = (Option("bucket", str), Option("prefix", str, ""), Option("partition_time", str,
                                                                          "sent"))


def test_an_unknown_key_is_rejected_with_a_did_you_mean_suggestion():
    with pytest.raises(ConfigError) as info:
        validate_options(SINK_OPTIONS, {"bukcet": "b"}, "sink")
    assert info.value.key == "sink.bukcet"
    assert str(info.value) == (
        "sink.bukcet: is not an option of this component; did you mean 'bucket'?")


def test_an_unknown_key_is_reported_before_a_missing_required_one():
    with pytest.raises(ConfigError) as info:
        validate_options(SINK_OPTIONS, {"prefx": "a/"}, "sink")
    assert info.value.key == "sink.prefx"
    assert "did you mean 'prefix'?" in str(info.value)


def test_an_unknown_key_with_no_close_match_lists_the_known_options():
    with pytest.raises(ConfigError) as info:
        validate_options(SINK_OPTIONS, {"zzz": 1}, "sink")
    assert "known options: bucket, partition_time, prefix" in str(info.value)


def test_a_component_without_options_says_it_takes_none():
    with pytest.raises(ConfigError) as info:
        validate_options((), {"anything": 1}, "transforms[0]")
    assert info.value.key == "transforms[0].anything"
    assert "it takes no options" in str(info.value)


def test_reserved_keys_are_skipped_and_not_returned():
    result = validate_options(SINK_OPTIONS, {"type": "s3", "bucket": "b"}, "sink",
                              reserved=("type",))
    assert "type" not in result
    assert result["bucket"] == "b"


@pytest.mark.parametrize(
    ("name", "candidates", "hint"),
    [
        ("sorce", ["service", "source", "sink"], "; did you mean 'source'?"),
        ("bukcet", ["bucket", "prefix"], "; did you mean 'bucket'?"),
        ("json_pars", ["enrich", "json_parse"], "; did you mean 'json_parse'?"),
        ("s4", ["s3"], "; did you mean 's3'?"),
        ("zzzzzz", ["bucket", "prefix"], ""),
        ("anything", [], ""),
    ],
)
def test_suggest_offers_the_closest_name_or_nothing(name, candidates, hint):
    assert suggest(name, candidates) == hint


# --------------------------------------------------------------------------------------------
# Error text
# --------------------------------------------------------------------------------------------


def test_the_error_names_the_dotted_key_the_value_and_what_was_expected():
    option = Option("poll_interval_seconds", float, 30.0, minimum=1, maximum=300)
    with pytest.raises(ConfigError) as info:
        option.convert("0", "source.poll_interval_seconds")
    assert str(info.value) == (
        "source.poll_interval_seconds: '0' is out of range; expected a number from 1 to 300")


def test_the_error_names_the_environment_variables_the_value_came_from():
    error = ConfigError("sink.prefix", "is bad", value="x", expected="y").with_env(
        ("S3_PREFIX", "OTHER"))
    assert str(error) == "sink.prefix: 'x' is bad; expected y (from $S3_PREFIX, $OTHER)"


def test_a_value_with_control_characters_keeps_the_error_on_one_line():
    error = _reject(Option("opt", int, None), "1\n2\r\x1b[31m", "has the wrong type")
    text = str(error)
    assert len(text.splitlines()) == 1
    assert "\\n" in text and "\\x1b" in text


def test_an_unknown_option_name_with_a_newline_keeps_the_error_on_one_line():
    with pytest.raises(ConfigError) as info:
        validate_options(SINK_OPTIONS, {"buck\net": "b"}, "sink")
    assert len(str(info.value).splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Typed list items
# --------------------------------------------------------------------------------------------


def test_list_items_are_converted_to_their_declared_type():
    assert Option("ports", list, items=int).convert(["80", 443], KEY) == [80, 443]
    assert Option("flags", list, items=bool).convert(["yes", False], KEY) == [True, False]


@pytest.mark.parametrize(("items", "value", "key", "problem"), [
    (str, ["a", 3], f"{KEY}[1]", "has the wrong type"),
    (int, ["1", "x"], f"{KEY}[1]", "has the wrong type"),
    (str, ["a", None], f"{KEY}[1]", "is empty"),
])
def test_a_bad_list_item_is_named_by_its_index(items, value, key, problem):
    with pytest.raises(ConfigError) as info:
        Option("opt", list, items=items).convert(value, KEY)
    assert info.value.key == key
    assert info.value.problem == problem


def test_a_list_of_strings_reads_as_such_in_errors():
    with pytest.raises(ConfigError) as info:
        Option("opt", list, items=str).convert("a,b", KEY)
    assert str(info.value) == f"{KEY}: 'a,b' has the wrong type; expected a list of strings"


# --------------------------------------------------------------------------------------------
# Declarations check themselves
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "message"), [
    (Option("size", int, "large"), "option 'size' has an invalid default: size: 'large' has the "
                                   "wrong type; expected an integer"),
    (Option("size", int, 99, maximum=10), "option 'size' has an invalid default: size: 99 is out "
                                          "of range; expected an integer of at most 10"),
    (Option("mode", str, "fast", choices=("slow",)), "option 'mode' has an invalid default"),
    (Option("when", object), "option 'when' has unsupported type"),
    (Option("tags", str, "", items=str), "items= applies to list options"),
    (Option("Bad-Name", str, ""), "option name 'Bad-Name' must be lower-case letters"),
])
def test_an_impossible_declaration_is_rejected_naming_the_component_and_option(option, message):
    from sqs_processor import TransformSpec

    with pytest.raises(ValueError) as info:
        TransformSpec("demo", lambda options, context: None, options=(option,))
    assert str(info.value).startswith("transform 'demo': ")
    assert message in str(info.value)


def test_duplicate_and_reserved_option_names_are_rejected():
    from sqs_processor import SinkSpec

    with pytest.raises(ValueError, match="option 'a' is declared twice"):
        SinkSpec("demo", lambda o, c: None, options=(Option("a", str, ""), Option("a", int, 1)))
    with pytest.raises(ValueError, match="'type' is reserved"):
        SinkSpec("demo", lambda o, c: None, options=(Option("type", str, ""),))
    with pytest.raises(TypeError, match="options must be Option declarations, not dict"):
        SinkSpec("demo", lambda o, c: None, options=({"name": "a"},))


def test_a_list_or_mapping_default_is_a_fresh_copy_for_every_block():
    options = (Option("tags", list, ["a"]), Option("extra", dict, {"k": []}))
    first = validate_options(options, {}, "x")
    first["tags"].append("changed")
    first["extra"]["k"].append(1)
    assert validate_options(options, {}, "x") == {"tags": ["a"], "extra": {"k": []}}


@pytest.mark.parametrize(("option", "labels"), [
    (Option("a", str), ("string", "(required)", "")),
    (Option("a", int, None, minimum=0, maximum=10), ("integer", "(unset)", "0-10")),
    (Option("a", float, 30.0, minimum=1), ("number", "30", "at least 1")),
    (Option("a", float, 0.5, maximum=2.5), ("number", "0.5", "at most 2.5")),
    (Option("a", bool, False), ("boolean", "false", "")),
    (Option("a", list, [], items=str), ("list of strings", "[]", "")),
    (Option("a", dict, {"k": "v"}), ("mapping", "{k: v}", "")),
    (Option("a", str, "sent", choices=("sent", "received")), ("string", "sent", "sent, received")),
    (Option("a", str, ""), ("string", '""', "")),
])
def test_options_describe_themselves_for_docs_and_describe(option, labels):
    assert (option.type_label(), option.default_label(), option.allowed_label()) == labels

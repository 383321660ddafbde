"""The pre-registration check: the registered settings match docs/protocol.md, and a changed setting is refused or
labelled exploratory."""

import copy

import pytest

from experiments.libero_transfer.protocol import (
    REGISTERED,
    ProtocolMismatchError,
    check_protocol,
    registered_hash,
    settings_hash,
)


@pytest.mark.parametrize("question", sorted(REGISTERED))
def test_the_registered_settings_are_the_ones_docs_protocol_names(question):
    status = check_protocol(question, REGISTERED[question])
    assert not status.exploratory
    assert status.settings_hash.startswith(registered_hash(question))
    assert status.to_dict()["exploratory"] is False


def test_a_changed_setting_is_refused_as_confirmatory_and_labelled_exploratory_otherwise():
    values = copy.deepcopy(REGISTERED["Q1"])
    values["ckt"]["adapter_dropout"] = 0.0  # the old demo's departure
    with pytest.raises(
        ProtocolMismatchError, match=r"differs from the registered settings in \['ckt.adapter_dropout'\]"
    ):
        check_protocol("Q1", values)
    status = check_protocol("Q1", values, confirmatory=False)
    assert status.exploratory and status.to_dict()["exploratory"] is True


def test_the_hash_is_canonical_and_a_missing_registration_is_exploratory(tmp_path):
    values = REGISTERED["Q2"]
    assert settings_hash(dict(reversed(list(values.items())))) == settings_hash(values)
    empty = tmp_path / "protocol.md"
    empty.write_text("no registration here")
    assert check_protocol("Q2", values, protocol_file=empty, confirmatory=False).exploratory
    with pytest.raises(ProtocolMismatchError, match="is not registered"):
        check_protocol("Q2", values, protocol_file=empty)
    with pytest.raises(ValueError, match="unknown question"):
        check_protocol("Q3", values)

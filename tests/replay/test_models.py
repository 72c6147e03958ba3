"""Model references: which URIs name a registered model version or alias."""

import pytest


@pytest.mark.parametrize(
    "uri, parsed",
    [
        ("models:/flight-delay@champion", ("flight-delay", "champion", None)),
        ("models:/m/12", ("m", None, "12")),
        ("models:/m/1\n", None),  # a trailing newline is not the same URI
        ("models:/m@champion\n", None),
        ("models:/m x@a", None),
        ("runs:/abc/model", None),
    ],
    ids=["alias", "version", "newline-version", "newline-alias", "space", "not-registry"],
)
def test_registry_uris_match_whole(uri, parsed):
    from workbench.replay.models import parse_registry_uri

    assert parse_registry_uri(uri) == parsed

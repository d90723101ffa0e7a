"""A model's settings.json: what it may say, how a version policy picks versions, how a load's
settings go over the file's, and how both go over the server's."""

from __future__ import annotations

import pytest

from service.contract import ArtifactError
from service.contract.model_settings import (
    ModelSettings,
    VersionPolicy,
    effective,
    parse_settings,
)


def test_a_version_policy_picks_the_newest_all_or_the_named() -> None:
    versions = ["1", "2", "10"]  # oldest first, as the registry sorts them
    assert VersionPolicy().choose(versions) == ["2", "10"]  # the default: the newest two
    assert VersionPolicy(latest=1).choose(versions) == ["10"]
    assert VersionPolicy(all=True).choose(versions) == versions
    assert VersionPolicy(specific=["1", "7"]).choose(versions) == ["1"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"max_batch": 4}', "max_batch: Extra inputs are not permitted"),
        ('{"version_policy": {"latest": 0}}', "version_policy.latest: Input should be greater"),
        ('{"version_policy": {"all": true, "latest": 2}}', "name one of latest, all, specific"),
        ('{"variant": "int4"}', "variant: Input should be 'int8', 'fp16' or 'fp32'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(raw: str, why: str) -> None:
    with pytest.raises(ArtifactError, match=r"models/m/settings\.json: ") as e:
        parse_settings(raw, "models/m/settings.json")
    assert why in str(e.value)


def test_a_loads_settings_go_over_the_files_and_both_over_the_servers() -> None:
    own = parse_settings('{"max_batch_size": 8, "max_wait_ms": 0}', "f")
    load = ModelSettings.model_validate({"max_streams": 32, "max_batch_size": 16})
    merged = own.merged(load)
    assert (merged.max_batch_size, merged.max_wait_ms, merged.max_streams) == (16, 0, 32)
    shown = effective(merged, 64, 2.0, 256, 1, None)
    assert shown.model_dump() == {
        "max_batch_size": 16,
        "max_wait_ms": 0.0,  # a 0 from the file is kept, not taken for "unset"
        "max_streams": 32,
        "variant": "fp32",
        "intra_op_threads": 1,
        "version_policy": {"latest": 2},
        "default_version": None,
    }

"""What users read and write by hand: memory sizes in error messages, and a job's
command, which must be a list (a string would have to be split by someone's rules)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kaon.core.jobs import JobSpec
from kaon.core.resources import describe_memory, parse_memory

Ki, Mi, Gi, Ti = 2**10, 2**20, 2**30, 2**40


class TestDescribeMemory:
    @pytest.mark.parametrize(
        ("n", "text"),
        [
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (Ki, "1 KiB"),
            (512 * Mi, "512 MiB"),
            (100 * Gi, "100 GiB"),
            (25276063744, "23.5 GiB"),  # the machine a user hit "25276063744 bytes" on
            (int(1.25 * Gi), "1.2 GiB"),
            (3 * Ti, "3 TiB"),
            (2048 * Ti, "2048 TiB"),  # no unit past TiB
        ],
    )
    def test_sizes_read_as_people_write_them(self, n: int, text: str) -> None:
        assert describe_memory(n) == text

    def test_more_digits_tell_close_sizes_apart(self) -> None:
        assert describe_memory(25276063744, digits=3) == "23.54 GiB"

    @pytest.mark.parametrize("n", [Ki, 512 * Mi, 100 * Gi, 3 * Ti])
    def test_whole_sizes_parse_back(self, n: int) -> None:
        assert parse_memory(describe_memory(n).replace(" ", "")) == n


class TestCommandMustBeAList:
    @pytest.mark.parametrize("command", ['python -c "print(3)"', "python", ""])
    def test_a_string_is_refused_asking_for_a_list(self, command: str) -> None:
        with pytest.raises(ValidationError, match="command must be a list of arguments"):
            JobSpec.model_validate({"command": command})

    def test_a_string_in_json_is_refused_too(self) -> None:
        with pytest.raises(ValidationError, match="not a string"):
            JobSpec.model_validate_json(json.dumps({"command": "python train.py"}))

    def test_a_list_keeps_its_arguments_as_given(self) -> None:
        spec = JobSpec.model_validate({"command": ["python", "-c", "print(3)"]})
        assert spec.command == ["python", "-c", "print(3)"]

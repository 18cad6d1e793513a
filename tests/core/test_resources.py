"""Memory sizes: parsed from what people type, formatted for tables."""

from __future__ import annotations

import pytest

from kaon.core.resources import Amount, Resources, format_memory, parse_memory

Ki, Mi, Gi, Ti = 2**10, 2**20, 2**30, 2**40


class TestParseMemory:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("4Gi", 4 * Gi),
            ("512Mi", 512 * Mi),
            ("2G", 2 * 10**9),
            ("2GB", 2 * 10**9),
            ("1.5GiB", int(1.5 * Gi)),
            ("1Ti", Ti),
            ("1T", 10**12),
            ("64Ki", 64 * Ki),
            ("64k", 64_000),
            ("100", 100),
            ("100b", 100),
            ("  8 gi  ", 8 * Gi),
            ("256MI", 256 * Mi),
            ("0.5Mi", Mi // 2),
        ],
    )
    def test_sizes(self, text: str, expected: int) -> None:
        assert parse_memory(text) == expected

    @pytest.mark.parametrize(("value", "expected"), [(1024, 1024), (0, 0), (1.9, 1)])
    def test_numbers_are_bytes(self, value: float, expected: int) -> None:
        assert parse_memory(value) == expected

    @pytest.mark.parametrize(
        "text", ["lots", "", "Gi", "4 Xi", "4Gib2", "-1Gi", "1e9", "4,5Gi", "1.2.3Gi", "4 G i"]
    )
    def test_nonsense_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match="is not a size"):
            parse_memory(text)

    def test_booleans_are_not_sizes(self) -> None:
        with pytest.raises(ValueError):
            parse_memory(True)


class TestFormatMemory:
    @pytest.mark.parametrize(
        ("n", "text"),
        [
            (0, "0"),
            (1023, "1023"),
            (1024, "1.0Ki"),
            (1536, "1.5Ki"),
            (512 * Mi, "512.0Mi"),
            (4 * Gi, "4.0Gi"),
            (int(1.5 * Gi), "1.5Gi"),
            (Ti, "1.0Ti"),
            (2048 * Ti, "2048.0Ti"),
        ],
    )
    def test_short_binary_form(self, n: int, text: str) -> None:
        assert format_memory(n) == text

    @pytest.mark.parametrize("n", [0, 1, 1024, 3 * Mi, 7 * Gi, 5 * Ti])
    def test_round_trip(self, n: int) -> None:
        assert parse_memory(format_memory(n)) == n


class TestResourcesAndAmounts:
    def test_memory_strings_become_bytes(self) -> None:
        assert Resources(memory="2Gi").memory == 2 * Gi  # type: ignore[arg-type]

    def test_amount_arithmetic_and_fit(self) -> None:
        worker = Amount.of(Resources(cpu=1.5, memory=Gi, gpus=1))
        gang = worker * 4
        assert gang == Amount(6.0, 4 * Gi, 4)
        node = Amount(8.0, 16 * Gi, 4)
        assert gang.fits_in(node)
        assert not (gang + worker).fits_in(node)
        assert (node - gang) == Amount(2.0, 12 * Gi, 0)
        assert Amount(0.1 + 0.2, 0, 0).fits_in(Amount(0.3, 0, 0))  # float slack

"""The ledger caches what the victim search asks once per running job (who borrows, how
much is lent out); every change of usage must give fresh answers, or a pass would take
back loans that were already returned."""

from __future__ import annotations

from kaon.scheduler import Quota
from kaon.scheduler.quota import QuotaLedger

from .factories import job


def ledger() -> QuotaLedger:
    running = (job("a1", gpus=4, ws="a", on=(("n1", (0, 1, 2, 3)),)),)
    return QuotaLedger({"a": Quota(gpus=4.0), "b": Quota(gpus=4.0)}, running)


class TestCachedAnswers:
    def test_borrowing_follows_each_change(self) -> None:
        book = ledger()
        assert not book.borrowing("a")
        extra = job("a2", gpus=2, ws="a", on=(("n2", (0, 1)),))
        book.add(extra, +1)
        assert book.borrowing("a")
        assert book.lenders() == ["a"]
        assert book.loans() == 2.0
        book.add(extra, -1)
        assert not book.borrowing("a")
        assert book.lenders() == []
        assert book.loans() == 0.0

    def test_lenders_list_is_the_callers_own(self) -> None:
        book = ledger()
        book.add(job("a2", gpus=1, ws="a", on=(("n2", (0,)),)), +1)
        book.lenders().clear()
        assert book.lenders() == ["a"]

    def test_unlimited_workspace_never_borrows(self) -> None:
        book = ledger()
        book.add(job("c1", gpus=8, ws="c", on=(("n3", tuple(range(8))),)), +1)
        assert not book.borrowing("c")
        assert book.loans() == 0.0

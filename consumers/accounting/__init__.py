"""The accounting sample target: ledger accounts, invoices, payments, customer balances."""

from __future__ import annotations

from queuestream.consumers.accounting.target import AccountingTarget

__all__ = ["AccountingTarget"]

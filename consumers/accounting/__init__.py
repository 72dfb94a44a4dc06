"""The accounting sample target: ledger accounts, invoices, payments, customer balances."""

from __future__ import annotations

from consumers.accounting.target import AccountingTarget

__all__ = ["AccountingTarget"]

"""Report writers: JUnit XML for CI, JSON for machines, one self-contained HTML file for people.

Every writer takes the runner's Result objects and passes all text through cxtest.logs.redact.
"""

from .html import write_html
from .json_report import results_to_dict, write_json
from .junit import write_junit
from .phone import InventorySummary, summarize_inventories, trend_text

__all__ = [
    "InventorySummary",
    "results_to_dict",
    "summarize_inventories",
    "trend_text",
    "write_html",
    "write_json",
    "write_junit",
]

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
    "write_stress_html",
    "render_stress_html",
]

_STRESS = ("render_stress_html", "write_stress_html")


def __getattr__(name: str):
    # Loaded on first use: the stress report pulls in the stress package, the store and numpy.
    if name in _STRESS:
        from . import stress

        return getattr(stress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

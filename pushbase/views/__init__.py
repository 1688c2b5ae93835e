"""Views: saved queries over a dataset. Formulas (calculations) and filters live here."""
from .filters import FILTERS, FilterOp, describe, parse_filters
from .formulas import FUNCTIONS, FieldRef, Formula, FormulaError, compile_calculations, compile_formula

__all__ = [
    "FILTERS",
    "FUNCTIONS",
    "FieldRef",
    "FilterOp",
    "Formula",
    "FormulaError",
    "compile_calculations",
    "compile_formula",
    "describe",
    "parse_filters",
]

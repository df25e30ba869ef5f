"""Diagnostic.render: location, source line, caret and help, even for huge lines."""

from policy.ast import Span
from policy.errors import Diagnostic


def test_render_shows_location_line_caret_and_help():
    """The caret sits under the span and the help line follows."""
    d = Diagnostic("E100", "unexpected token", "p.fpl", Span(2, 5, 2, 8), help="remove it", source_line="  x foo y")
    assert d.render() == "p.fpl:2:5: error[E100]: unexpected token\n   2 |   x foo y\n           ^^^\n  help: remove it"


def test_render_shortens_a_huge_line_around_the_caret():
    """A one-line 1 MB file prints a short excerpt with the caret still under the span."""
    line = "a" * 500_000 + "BAD" + "b" * 500_000
    d = Diagnostic("E100", "bad", "p.fpl", Span(1, 500_001, 1, 500_004), source_line=line)
    shown, caret = d.render().splitlines()[1:3]
    assert len(shown) < 200
    assert shown[caret.index("^"):caret.index("^") + 3] == "BAD"
    assert caret.count("^") == 3

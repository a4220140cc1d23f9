"""The CONSORT flow diagram as a standalone SVG document.

The drawing is plain boxes, lines and text: no script, no link, no image, no font file
(a generic ``sans-serif`` family), no style sheet (presentation attributes only, which
no Content-Security-Policy blocks). A browser, a word processor or a PDF tool shows it
as it is, and the page that serves it needs nothing more than ``img-src 'self'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from stillroom.webapp.study.consort import LABELS, TOTAL, Flow, flow_as_dict, rows_of
from stillroom.webapp.study.definition import Study

FONT = 13
LINE = 18
PADDING = 8
COLUMN = 300
GAP = 30
LABELS_WIDTH = 110
ROW_GAP = 40
#: The width of the box of exclusions, beside the enrolment column.
SIDE = 330


@dataclass(frozen=True)
class Box:
    """A box of the diagram: where it is and its lines of text."""

    x: int
    y: int
    width: int
    lines: tuple[str, ...]

    @property
    def height(self) -> int:
        """The box's height, from its number of lines."""
        return len(self.lines) * LINE + 2 * PADDING

    @property
    def middle(self) -> int:
        """The x of the box's vertical middle."""
        return self.x + self.width // 2


def draw_box(box: Box) -> list[str]:
    """Return the SVG elements of one box and its text."""
    parts = [
        f'<rect x="{box.x}" y="{box.y}" width="{box.width}" height="{box.height}"'
        ' fill="#ffffff" stroke="#000000"/>'
    ]
    for number, line in enumerate(box.lines):
        y = box.y + PADDING + (number + 1) * LINE - 5
        parts.append(f'<text x="{box.x + PADDING}" y="{y}">{escape(line)}</text>')
    return parts


def line(x1: int, y1: int, x2: int, y2: int, head: bool = False) -> str:
    """Return a line, ending in an arrowhead (the marker defined in the document) if ``head``."""
    marker = ' marker-end="url(#head)"' if head else ""
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#000000"{marker}/>'


def arrow(x1: int, y1: int, x2: int, y2: int) -> str:
    """Return a line ending in an arrowhead."""
    return line(x1, y1, x2, y2, head=True)


def draw(
    study: Study, flows: dict[str, Flow], exact: bool = False, labels: dict[str, str] = LABELS
) -> str:
    """Return the CONSORT 2025 flow diagram of all strata, as an SVG document.

    Enrolment (assessed, excluded with reasons, randomised), then one column per arm
    through allocation, follow-up and analysis. Counts are masked unless ``exact``.

    :param labels: the boxes' texts (:data:`~stillroom.webapp.study.consort.LABELS`'s keys).
    """
    text = rows_of(study, flow_as_dict(flows[TOTAL], exact), labels)
    arms_width = len(study.arms) * (COLUMN + GAP)
    left = LABELS_WIDTH + max(0, (arms_width - COLUMN) // 2 - SIDE // 2)
    width = max(LABELS_WIDTH + arms_width, left + COLUMN + GAP + SIDE + 10)

    assessed = Box(left, 20, COLUMN, tuple(text["assessed"]))
    excluded = Box(
        left + COLUMN + GAP,
        assessed.y + assessed.height + ROW_GAP // 2,
        SIDE,
        tuple(text["excluded"]),
    )
    randomised = Box(
        left, excluded.y + excluded.height + ROW_GAP // 2, COLUMN, tuple(text["randomised"])
    )
    side = excluded.y + excluded.height // 2
    parts = [
        *draw_box(assessed),
        *draw_box(excluded),
        *draw_box(randomised),
        arrow(assessed.middle, assessed.y + assessed.height, assessed.middle, randomised.y),
        arrow(assessed.middle, side, excluded.x, side),
    ]
    top = randomised.y + randomised.height + ROW_GAP
    branch = top - ROW_GAP // 2
    middles = [LABELS_WIDTH + i * (COLUMN + GAP) + COLUMN // 2 for i in range(len(study.arms))]
    parts.append(
        line(randomised.middle, randomised.y + randomised.height, randomised.middle, branch)
    )
    parts.append(line(min([*middles, randomised.middle]), branch, max(middles), branch))

    sections = {"enrolment": assessed.y}
    bottom = top
    for index, arm in enumerate(study.arms):
        x = LABELS_WIDTH + index * (COLUMN + GAP)
        allocation = Box(x, top, COLUMN, tuple(text[f"allocation:{arm.id}"]))
        follow = Box(
            x,
            allocation.y + allocation.height + ROW_GAP,
            COLUMN,
            tuple(text[f"follow-up:{arm.id}"]),
        )
        analysis = Box(
            x, follow.y + follow.height + ROW_GAP, COLUMN, tuple(text[f"analysis:{arm.id}"])
        )
        parts += [*draw_box(allocation), *draw_box(follow), *draw_box(analysis)]
        parts.append(arrow(allocation.middle, branch, allocation.middle, allocation.y))
        parts.append(
            arrow(x + COLUMN // 2, allocation.y + allocation.height, x + COLUMN // 2, follow.y)
        )
        parts.append(arrow(x + COLUMN // 2, follow.y + follow.height, x + COLUMN // 2, analysis.y))
        sections |= {"allocation": allocation.y, "follow-up": follow.y, "analysis": analysis.y}
        bottom = max(bottom, analysis.y + analysis.height)
    for key, y in sections.items():
        parts.append(f'<text x="8" y="{y + LINE}" font-weight="bold">{escape(labels[key])}</text>')

    height = bottom + 20
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{FONT}"'
        ' role="img" aria-labelledby="title">'
        f'<title id="title">CONSORT: {escape(study.id)}</title>'
        '<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8"'
        ' markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#000000"/>'
        "</marker></defs>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
    )
    return head + "\n".join(parts) + "</svg>\n"

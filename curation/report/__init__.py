"""A self-contained HTML report of a built dataset (``curate report``): ``DATASET/report/index.html``.

Static and offline: one file, charts as inline SVG, thumbnails (never originals) embedded as base64 JPEG, no
script and no external resource. Sections: run summary, funnel with thumbnails of rejected inputs per reason,
duplicate groups, aspect-ratio buckets, caption lengths and T5 tokens per caption, caption quality flags,
scores, per-stage throughput, and a gallery of kept samples with all their captions and scores. A section
whose data the dataset lacks (built before the feature, or nothing to show) says so.
"""

from __future__ import annotations

from curation.io.layout import REPORT_DIR, atomic_write, filesystem
from curation.report import content, overview
from curation.report.content import GALLERY_SIDE
from curation.report.data import MAX_THUMBNAILS, ReportData, load
from curation.report.html import page

THUMBNAIL_SIDE = GALLERY_SIDE
SECTIONS = (
    ("summary", "Summary", overview.summary_section),
    ("funnel", "Funnel", overview.funnel_section),
    ("duplicates", "Duplicates", overview.duplicates_section),
    ("buckets", "Buckets", content.buckets_section),
    ("captions", "Captions", content.captions_section),
    ("flags", "Caption flags", content.flags_section),
    ("scores", "Scores", content.scores_section),
    ("stages", "Stages", overview.stages_section),
    ("gallery", "Samples", content.gallery_section),
)
SECTION_IDS = tuple(anchor for anchor, _, _ in SECTIONS)

__all__ = ["MAX_THUMBNAILS", "SECTION_IDS", "THUMBNAIL_SIDE", "render_report", "write_report"]


def render(data: ReportData) -> str:
    title = f"Dataset report: {data.root}"
    return page(title, [(anchor, name) for anchor, name, _ in SECTIONS], [build(data) for _, _, build in SECTIONS])


def render_report(path: str) -> str:
    """The report page for the dataset at ``path``."""
    return render(load(path))


def write_report(path: str) -> str:
    """Write ``path/report/index.html`` and return where it is, as ``path`` names it (``s3://…`` stays a URL)."""
    fs, root = filesystem(path)
    report = render_report(path).encode("utf-8")
    atomic_write(fs, f"{root}/{REPORT_DIR}/index.html", lambda file: file.write(report))
    return f"{path.rstrip('/')}/{REPORT_DIR}/index.html"

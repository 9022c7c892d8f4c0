"""``ropext report``: one Markdown page, with its plots, from the result files of ``ropext eval``.

Result files are grouped into sections by (task, options other than the lengths): numbers are comparable within
a section, whichever model they are of. A ppl corpus counts by its content, not its path (``corpus_groups``).
Inside a section there is one series per (model, scaling); files of the same series (e.g. the same scaling
evaluated at different lengths by different runs) are merged by length. A series' label is the scaling's
``method``, plus the smallest disambiguator that tells apart scalings of the same method with different factors:
the differing method parameters (``dprope:t=0.001``), the target length (``yarn@64k``), or, when neither does,
the result file's stem. In a section with several models, the series of models other than the main one also
name their model (``section_labels``).

One module per job, each using only those before it: ``loading`` (result files, read through
``ropext.results``), ``labels`` (series labels and order), ``corpora`` (which corpora are one), ``sections``,
``tables``, ``plots`` and ``page`` (``write_report``).
"""

from ropext.report.corpora import corpus_groups
from ropext.report.labels import label_key, main_model, method_labels, section_labels, series_order
from ropext.report.loading import load_result, load_results
from ropext.report.page import Report, write_report
from ropext.report.sections import Section, Series, build_sections

__all__ = [
    "Report",
    "Section",
    "Series",
    "build_sections",
    "corpus_groups",
    "label_key",
    "load_result",
    "load_results",
    "main_model",
    "method_labels",
    "section_labels",
    "series_order",
    "write_report",
]

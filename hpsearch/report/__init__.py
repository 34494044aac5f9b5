"""Reports on recorded studies: terminal tables and exports (tables), Plotly figures (figures),
the self-contained HTML report (html). Nothing here imports torch.

Files are written with `hpsearch.paths.atomic_text`: into a temporary file beside the target,
then renamed over it, so a failed write never leaves a half-written export or report behind.
"""
